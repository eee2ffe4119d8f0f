"""Ctrl-C for a long command that works in batches: the first asks it to stop after the work under way (a loop
looks at :attr:`StopAsked.asked`), a second stops it at once (``KeyboardInterrupt``). Worker processes it starts
don't see Ctrl-C (the terminal sends it to the whole process group): :func:`start_forkserver_with_sigint_blocked`."""

from __future__ import annotations

import multiprocessing.forkserver
import multiprocessing.resource_tracker
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


def start_forkserver_with_sigint_blocked() -> None:
    """Start this process's multiprocessing forkserver (if not running) with SIGINT blocked: it and every worker it
    forks are born with Ctrl-C held back, before they import anything (a worker set up afterwards could die of a
    Ctrl-C during its imports, and break its pool). Call it before each pool: a forkserver that died is started
    again by the next pool, with this thread's mask of the moment.

    SIGINT is never ignored here, so a Ctrl-C meanwhile is not lost (setting SIG_IGN discards a pending one, and
    drops one another thread takes): it reaches another thread, or stays pending until the mask is back, and then
    this process's handler. The thread's mask is as before afterwards, but for SIGTERM, which the resource tracker's
    start leaves unblocked."""
    # The resource tracker first: its own start blocks SIGINT and SIGTERM and then *unblocks* them in this thread.
    multiprocessing.resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        multiprocessing.forkserver.ensure_running()  # a fork and exec: the child keeps this thread's mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
