"""The error hierarchy and the one mapping from failures to exit codes.

Core modules raise these; only the CLI turns them into a message and an exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    LOCKED = 4
    # A cluster's leader changed under the command (or the member is no longer the leader):
    # it stopped cleanly and wrote nothing to a non-leader.
    ROLE_CHANGED = 5
    INTERRUPTED = 130


class AegisError(Exception):
    """A foreseeable failure: shown to the user as one line, never as a traceback."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class OperationFailed(AegisError):
    exit_code = ExitCode.FAILED


class ConfigError(AegisError):
    exit_code = ExitCode.USAGE


class UsageError(AegisError):
    exit_code = ExitCode.USAGE


class ConnectionFailed(AegisError):
    """The database cannot be reached, or refused us (wrong password, missing database)."""

    exit_code = ExitCode.UNREACHABLE


class RemoteUnavailable(AegisError):
    exit_code = ExitCode.UNREACHABLE


class LockBusy(AegisError):
    exit_code = ExitCode.LOCKED


class RoleChanged(AegisError):
    """The member a write went to is not (or no longer) the leader of its cluster."""

    exit_code = ExitCode.ROLE_CHANGED


class MissingBinary(OperationFailed):
    pass
