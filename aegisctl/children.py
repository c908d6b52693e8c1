"""Child processes (pg_dump, pg_restore, psql, Barman): they die with aegisctl, and how one
ended is said one way everywhere.

A child started with `preexec_fn=die_with_parent()` gets a signal from the kernel when
aegisctl dies, even by SIGKILL (Linux PR_SET_PDEATHSIG), so no orphaned pg_restore goes on
writing into a database nobody watches and no orphaned pg_dump holds a snapshot. The setting
belongs to the thread that started the child: start children from a thread that lives as
long as the run (the main thread, in every aegisctl command).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec function for subprocess: the child gets `sig` when aegisctl dies. It runs in
    the child after any user switch (which would clear the setting), where nothing can be
    imported any more: libc is resolved here. None where prctl does not exist (not Linux)."""
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # aegisctl died before the setting took effect
            os.kill(os.getpid(), int(sig))
    return arm


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def exit_cause(code: int, detail: str | None = None) -> str:
    """How a child ended, for a message: 'killed by signal SIGKILL', else its own last word
    (`detail`, e.g. its last stderr line), else 'exit code 3'."""
    if code < 0:
        return f"killed by signal {signal_name(-code)}"
    detail = (detail or "").strip()
    return detail or f"exit code {code}"


def pid_alive(pid: int) -> bool:
    """Does a process with this pid exist? (One owned by another user counts: it exists.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
