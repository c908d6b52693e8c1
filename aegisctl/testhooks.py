"""Test-only: pause at a named step, so the fault suite can kill aegisctl (or a child it
started) at exactly that point. Never set these variables in production.

AEGISCTL_TEST_PAUSE_AT=<step> makes `pause_at(<step>)` write "<pid> <step>" to the file named
by AEGISCTL_TEST_PAUSE_FILE and wait while that file exists: the test then kills what it wants
and removes the file to let the run go on. A child passed to `pause_at` is stopped (SIGSTOP)
while paused, so it cannot finish before the test has acted on it, and continued after.
Without the variable (always, outside tests) `pause_at` does nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

PAUSE_AT = "AEGISCTL_TEST_PAUSE_AT"
PAUSE_FILE = "AEGISCTL_TEST_PAUSE_FILE"


def pause_at(step: str, child: int | None = None) -> None:
    if os.environ.get(PAUSE_AT) != step or not os.environ.get(PAUSE_FILE):
        return
    marker = Path(os.environ[PAUSE_FILE])
    if child is not None:
        os.kill(child, signal.SIGSTOP)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(f"{os.getpid()} {step}\n")
    os.replace(tmp, marker)
    while marker.exists():
        time.sleep(0.05)
    if child is not None:
        # The test may have killed it: what the run does next is what is being tested.
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGCONT)
