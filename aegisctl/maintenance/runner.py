"""Running maintenance statements safely: a short lock_timeout on every statement that needs a
table lock, retries with backoff when the lock is busy, progress from pg_stat_progress_*, and
one result type (`MaintResult`) for every maintenance command.

Why the short lock_timeout: a statement waiting for an ACCESS EXCLUSIVE lock (VACUUM FULL,
REINDEX without CONCURRENTLY, DETACH PARTITION) blocks every later query on the table while it
waits. Behind a running pg_dump or a long transaction that wait is unbounded and the
application stalls. With a short lock_timeout the statement gives up quickly, lets the queue
drain, and tries again later.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.db import backoff_delays
from aegisctl.errors import OperationFailed
from aegisctl.maintenance.settings import MaintenanceSettings

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from aegisctl.output import Block

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
StopCheck = Callable[[], bool]
SideConnect = Callable[[], "psycopg.Connection[Any]"]

LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"


def never_stop() -> bool:
    return False


@dataclass
class MaintContext:
    """What every maintenance step needs: the connection (autocommit), the settings, and the
    hooks the CLI provides (progress lines on a terminal, a second connection for the progress
    views, the interrupt flag)."""

    conn: psycopg.Connection[Any]
    settings: MaintenanceSettings
    dry_run: bool = False
    progress: Progress | None = None
    side_connect: SideConnect | None = None
    should_stop: StopCheck = never_stop


@dataclass
class Step:
    statement: str
    target: str
    status: str = "planned"  # planned | done | failed | skipped | cancelled
    seconds: float | None = None
    detail: str = ""
    attempts: int = 0
    # The SQLSTATE of the error that ended the step (not in the JSON: detail says it in words).
    sqlstate: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"statement": self.statement, "target": self.target, "status": self.status,
                "seconds": None if self.seconds is None else round(self.seconds, 3),
                "detail": self.detail, "attempts": self.attempts}


@dataclass
class MaintResult:
    action: str
    dry_run: bool
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not any(s.status == "failed" for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "dry_run": self.dry_run, "ok": self.ok,
                "interrupted": self.interrupted, "steps": [s.to_json() for s in self.steps],
                "notes": self.notes}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        if self.dry_run:
            blocks: list[Block] = [Note(f"-- {self.action}: dry run, these statements would run")]
            blocks += [Note(s.statement + ";") for s in self.steps]
        else:
            blocks = [Table(
                [Column("target", "id"), "status", Column("seconds", "number"),
                 Column("detail", "text")],
                [(s.target, s.status, None if s.seconds is None else round(s.seconds, 2),
                  s.detail) for s in self.steps],
                title=self.action, empty="nothing to do")]
        blocks += [Note(n) for n in self.notes]
        if self.interrupted:
            blocks.append(Note("interrupted: the steps above marked done are complete; "
                               "nothing is left half-done"))
        return blocks


def ensure_primary(conn: psycopg.Connection[Any], what: str) -> None:
    """Writes and maintenance need the primary: say so before trying on a standby."""
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if row and row[0]:
        raise OperationFailed(f"the target is a standby (in recovery): {what} runs on the "
                              "primary", hint="choose the primary with --target")


def render_sql(conn: psycopg.Connection[Any], statement: sql.Composed | sql.SQL) -> str:
    return statement.as_string(conn)


def set_lock_timeout(conn: psycopg.Connection[Any], seconds: float) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(seconds * 1000)}ms",))


def run_locked(ctx: MaintContext, statement: sql.Composed | sql.SQL, step: Step,
               lock_timeout: float | None = None, attempts: int | None = None,
               announce: str | None = None) -> bool:
    """Run one statement with a short lock_timeout, retrying (with backoff and jitter) while
    the lock is busy; a step that never gets its lock fails with a clear message. Returns
    whether it ran. `announce` (with progress on): a status line when the step starts and one
    when it ends, for steps that can run for minutes inside a larger command."""
    if announce and ctx.progress:
        ctx.progress(f"{announce} ...")
    ran = _run_locked(ctx, statement, step, lock_timeout, attempts)
    if announce and ctx.progress:
        took = f" after {step.seconds:.1f}s" if step.seconds is not None else ""
        outcome = {"done": f"done in {step.seconds or 0:.1f}s"}.get(
            step.status, f"{step.status}{took}")
        ctx.progress(f"{announce}: {outcome}")
    return ran


def _run_locked(ctx: MaintContext, statement: sql.Composed | sql.SQL, step: Step,
                lock_timeout: float | None, attempts: int | None) -> bool:
    import psycopg

    from aegisctl.cluster.members import connection_lost, recheck

    recheck(ctx.conn)  # on a cluster: still the leader before each step?
    settings = ctx.settings
    timeout = settings.lock_timeout if lock_timeout is None else lock_timeout
    tries = settings.lock_attempts if attempts is None else attempts
    delays = backoff_delays(tries, max(timeout, 0.5), settings.lock_max_delay)
    set_lock_timeout(ctx.conn, timeout)
    started = time.perf_counter()
    for attempt in range(len(delays) + 1):
        step.attempts = attempt + 1
        try:
            with _watch_progress(ctx, step.target):
                ctx.conn.execute(statement)
            step.status = "done"
            step.seconds = time.perf_counter() - started
            return True
        except psycopg.Error as exc:
            lost = connection_lost(ctx.conn, exc)
            if lost is not None:
                raise lost from None
            if getattr(exc, "sqlstate", None) == QUERY_CANCELED and ctx.should_stop():
                step.status = "cancelled"
                step.seconds = time.perf_counter() - started
                step.detail = "cancelled by the interrupt; PostgreSQL rolled it back"
                return False
            if getattr(exc, "sqlstate", None) != LOCK_NOT_AVAILABLE or attempt >= len(delays):
                step.status = "failed"
                step.sqlstate = getattr(exc, "sqlstate", None)
                step.seconds = time.perf_counter() - started
                if getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                    step.detail = (f"gave up after {step.attempts} attempts: the table stayed "
                                   f"locked (each attempt waited at most {timeout:g}s for the "
                                   "lock, so the application was never queued behind us); "
                                   "try again when the long transaction or pg_dump has ended")
                else:
                    step.detail = _first_line(exc)
                return False
            log.info("%s: lock busy, retrying in %.1fs", step.target, delays[attempt])
            if ctx.progress:
                ctx.progress(f"{step.target}: lock busy (attempt {attempt + 1}/{tries}); "
                             f"retrying in {delays[attempt]:.1f}s")
            if sleep_unless_stopped(ctx, delays[attempt]):
                step.status = "skipped"
                step.detail = "interrupted while waiting for the lock"
                return False
    raise AssertionError("unreachable")


def sleep_unless_stopped(ctx: MaintContext, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctx.should_stop():
            return True
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    return ctx.should_stop()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Progress: a side connection polls the progress views for our backend while a step runs.

_PROGRESS_SQL = """
SELECT 'vacuum' AS kind, phase, heap_blks_scanned, heap_blks_total FROM pg_stat_progress_vacuum
 WHERE pid = %(pid)s
UNION ALL
SELECT 'vacuum full', phase, heap_blks_scanned, heap_blks_total FROM pg_stat_progress_cluster
 WHERE pid = %(pid)s
UNION ALL
SELECT 'index build', phase, blocks_done, blocks_total FROM pg_stat_progress_create_index
 WHERE pid = %(pid)s
UNION ALL
SELECT 'analyze', phase, sample_blks_scanned, sample_blks_total FROM pg_stat_progress_analyze
 WHERE pid = %(pid)s
"""


@contextlib.contextmanager
def _watch_progress(ctx: MaintContext, what: str) -> Iterator[None]:
    if ctx.progress is None or ctx.side_connect is None:
        yield
        return
    pid = ctx.conn.info.backend_pid
    done = threading.Event()
    report = ctx.progress
    side_connect = ctx.side_connect
    interval = max(0.2, ctx.settings.progress_interval)

    def poll() -> None:
        last = ""
        try:
            with side_connect() as side:
                while not done.wait(interval):
                    for kind, phase, current, total in side.execute(_PROGRESS_SQL,
                                                                    {"pid": pid}).fetchall():
                        share = f" {100 * current / total:.0f}%" if total else ""
                        line = f"{what}: {kind}, {phase}{share}"
                        if line != last:  # a long phase without a measure: say it once
                            report(line)
                            last = line
        except Exception as exc:  # progress is a courtesy: never fail the work for it
            log.debug("progress polling stopped: %s", exc)

    thread = threading.Thread(target=poll, name="aegisctl-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
