"""Running wrk with a Lua script and reading what it measured, for the HTTP benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Any

# Appended to every script: wrk reports the run as one JSON line (percentiles in microseconds).
DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def run_wrk(base_url: str, script: str, *, threads: int, connections: int, duration: int) -> dict[str, Any]:
    """Run ``script`` (a wrk ``request`` function; the reporter is added here) and return the report."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script + DONE)
    try:
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", fh.name, base_url],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(fh.name)
    return json.loads(next(line for line in out.splitlines() if line.startswith("WRK "))[4:])
