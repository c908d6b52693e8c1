"""Children die with their parent: a preexec function that asks the kernel (Linux
PR_SET_PDEATHSIG) to signal a child when the process that started it dies, kill -9 included,
so no command keeps running (and holding locks, slots, connections) after its runner is gone.

Used by the job runner for the commands it starts and by the Barman engine; one helper, for
every subprocess that must not outlive aegisctl. The setting is per thread of the parent: the
signal comes when the thread that started the child exits, so start children from a thread
that lives as long as the child (the runner waits for its child in the same thread).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn for subprocess.Popen, or None where prctl is not available. libc is
    resolved here, in the parent: after a fork (and a user switch) nothing can be imported."""
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    signum = int(sig)
    return lambda: prctl(_PR_SET_PDEATHSIG, signum)
