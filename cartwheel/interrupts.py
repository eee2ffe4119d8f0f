"""Ctrl-C for a long command that works in batches: the first asks it to stop after the work under way (a loop
looks at :attr:`StopAsked.asked`), a second stops it at once (``KeyboardInterrupt``). Worker processes it starts
don't see Ctrl-C (the terminal sends it to the whole process group): :func:`forkserver_ignoring_interrupts`."""

from __future__ import annotations

import multiprocessing.forkserver
import signal
import threading
from types import FrameType, TracebackType

INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it


class StopAsked:
    """While entered (on the main thread): SIGINT sets :attr:`asked`; a second one raises ``KeyboardInterrupt``."""

    def __init__(self) -> None:
        self.asked = False
        self._previous: object = None

    def __enter__(self) -> StopAsked:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]

    def _on_interrupt(self, _signal: int, _frame: FrameType | None) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True


def forkserver_ignoring_interrupts() -> None:
    """Start this process's multiprocessing forkserver (if not running) with SIGINT ignored: it and every worker it
    forks are born ignoring Ctrl-C, before they import anything (a worker set up afterwards could die of a Ctrl-C
    during its imports, and break its pool)."""
    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's to set
        multiprocessing.forkserver.ensure_running()
        return
    # Blocked meanwhile, not lost: a Ctrl-C while it starts stays pending (Linux never drops a blocked signal as
    # ignored), and reaches this process's own handler once the handler is back.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
