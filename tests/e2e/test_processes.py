"""The shop's processes as the operating system sees them."""

from __future__ import annotations

import re
import time

from cartwheel.settings import SERVICES
from cartwheel.supervisor import System


def test_every_service_and_gateway_worker_froze_its_startup_heap(system: System) -> None:
    """Each process moves what it started with out of the cyclic collector's full runs (cartwheel.heap):
    without it a full collection walked ~130,000 objects (~95 ms) about once a second under load."""
    log = system.settings.var_dir / "system.log"
    frozen = re.compile(r"(\d+) startup objects frozen")
    expected = {**dict.fromkeys(SERVICES, 1), "gateway": system.settings.gateway_workers}
    deadline = time.monotonic() + 10
    while True:  # the lines are written at start-up; the supervisor copies them into the log as they come
        counts: dict[str, list[int]] = {}
        for line in log.read_text(encoding="utf-8").splitlines():
            process, _, text = line.partition("|")
            if found := frozen.search(text):
                counts.setdefault(process.strip(), []).append(int(found.group(1)))
        seen = {name: min(len(counts.get(name, [])), wanted) for name, wanted in expected.items()}
        if seen == expected or time.monotonic() > deadline:  # at least: a restarted worker says it again
            break
        time.sleep(0.2)
    assert seen == expected
    assert min(n for found in counts.values() for n in found) > 10_000  # modules, classes, validators: ~120,000
