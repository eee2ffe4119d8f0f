"""Progress of work on many tenants: done / failed / remaining and the rate, a live bar on a terminal, a line every
few seconds elsewhere (CI logs, journald)."""

from __future__ import annotations

import time
from typing import TextIO

PLAIN_EVERY_S = 5.0  # a line of progress this often where the output is not a terminal


class Progress:
    """done / failed / remaining and the rate: a live bar on a terminal, a line every few seconds elsewhere."""

    def __init__(self, total: int, out: TextIO) -> None:
        from rich.console import Console

        self.total, self.done, self.failed = total, 0, 0
        self.console = Console(file=out, highlight=False)
        self.started = self.printed = time.monotonic()
        self._bar: object | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn("migrating"), BarColumn(), TextColumn("{task.description}"),
                           TimeRemainingColumn(), console=self.console)
            bar.start()
            self._task = bar.add_task(self._text(), total=self.total)
            self._bar = bar
        return self

    def step(self, *, failed: bool) -> None:
        self.done += not failed
        self.failed += failed
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=self._text())  # type: ignore[attr-defined]
        elif time.monotonic() - self.printed >= PLAIN_EVERY_S:
            self.printed = time.monotonic()
            self.console.print(f"migrating: {self._text()}")

    def _text(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = (self.done + self.failed) / elapsed if elapsed > 0 else 0.0
        remaining = self.total - self.done - self.failed
        return f"{self.done} done, {self.failed} failed, {remaining} remaining, {rate:.0f}/s"

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()  # type: ignore[attr-defined]
        else:
            self.console.print(f"migrating: {self._text()}")
