"""SIGINT/SIGTERM during long jobs: the first signal asks the job to stop after its current
step (a batch, a table) and runs the flag's callbacks (maint cancels the running statement);
a second one interrupts at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from aegisctl import output


class StopFlag:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.callbacks: list[Callable[[], object]] = []

    def __call__(self) -> bool:
        return self.event.is_set()


@contextlib.contextmanager
def graceful_stop(what: str) -> Iterator[StopFlag]:
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.event.is_set():
            raise KeyboardInterrupt
        flag.event.set()
        output.print_status(f"{signal.Signals(signum).name}: stopping after the current "
                            f"{what} (again to abort now)")
        for callback in flag.callbacks:
            with contextlib.suppress(Exception):
                callback()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
