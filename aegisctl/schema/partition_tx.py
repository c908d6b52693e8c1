"""Short DDL transactions that never keep the application queued behind them.

A statement waiting for a lock blocks every later statement on that table while it waits, so
each transaction here runs with a short `lock_timeout`: if a lock is not granted quickly the
transaction rolls back, the queue drains, and it is tried again after a backoff with jitter.
The time from the first lock granted to COMMIT is measured: that is how long the
application could have waited on us once we held the lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.db import backoff_delays
from aegisctl.errors import AegisError, ExitCode, OperationFailed

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

LOCK_NOT_AVAILABLE = "55P03"


class Interrupted(AegisError):
    exit_code = ExitCode.INTERRUPTED


@dataclass
class LockPolicy:
    lock_timeout: float = 0.1  # seconds a statement may wait for a lock
    attempts: int = 50
    max_delay: float = 5.0
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class TxOutcome:
    seconds: float  # wall time of the successful attempt, lock wait included
    attempts: int


def pause_point(name: str) -> None:
    """The fault suite's hook (aegisctl.testhooks): stop at `partition:<name>` to be killed."""
    from aegisctl.testhooks import pause_at

    pause_at(f"partition:{name}")


def short_transaction(conn: psycopg.Connection[Any], what: str, policy: LockPolicy,
                      body: Callable[[], None]) -> TxOutcome:
    """Run body() in one transaction with SET LOCAL lock_timeout, retrying the whole
    transaction while a lock is busy. `conn` is in autocommit mode."""
    import psycopg

    delays = backoff_delays(policy.attempts, max(policy.lock_timeout, 0.05), policy.max_delay)
    for attempt in range(len(delays) + 1):
        started = time.perf_counter()
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)",
                             (f"{max(1, int(policy.lock_timeout * 1000))}ms",))
                body()
            return TxOutcome(time.perf_counter() - started, attempt + 1)
        except psycopg.Error as exc:
            if getattr(exc, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            if attempt >= len(delays):
                raise OperationFailed(
                    f"{what}: gave up after {attempt + 1} attempts, the lock stayed busy (each "
                    f"attempt waited at most {policy.lock_timeout:g}s, so the application was "
                    "never queued behind us for longer)",
                    hint="run again when the long transaction or pg_dump holding it has "
                         "ended; nothing is left half-done") from None
            log.info("%s: lock busy, retrying in %.2fs", what, delays[attempt])
            deadline = time.monotonic() + delays[attempt]
            while time.monotonic() < deadline:
                if policy.should_stop():
                    raise Interrupted(f"{what}: interrupted while waiting for a lock; nothing "
                                      "is left half-done") from None
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")
