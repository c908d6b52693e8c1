"""The batched delete: each batch its own short transaction, never one giant DELETE.

Two ways to bound a batch, chosen per table from the planner's estimate of the expired share:
- `index` (the age column has a btree index and few rows are expired): a batch locks the
  oldest `n` expired, non-exempt rows at or after where the previous batch ended and deletes
  them by ctid. Walking forward from the last position never rescans the dead index entries
  of earlier batches.
- `pages` (no such index, or a large share expired: reading the heap in order is then cheaper
  than one random heap visit per row): batches cover ranges of heap pages (a TID range scan),
  so the whole table is read once in all, never once per batch; the range adapts to how many
  expired rows the previous ranges held.
A row the application updates meanwhile is re-checked by PostgreSQL against the age and
exemption conditions (or skipped, when chosen by ctid). A policy with keep_referenced_by locks
its rows FOR UPDATE SKIP LOCKED before deleting them: a row a new foreign key is being pointed
at is then left for the next run instead of slipping past the NOT EXISTS check (that costs a
second write per row, so other policies do without). Other policies switch to the same SKIP
LOCKED form for the rest of the table as soon as one batch runs out of lock_timeout: a row
another session holds (SELECT ... FOR UPDATE in an idle transaction) is skipped, counted and
left for a later run instead of stopping the policy at that row forever.

Batches without an archive commit with synchronous_commit off: a crash can undo the last few
batches, which the next run simply deletes again; with an archive every commit is durable, so
the archive and the table agree.

Every batch runs with SET LOCAL lock_timeout and statement_timeout; one that times out is
retried smaller. Batch sizes adapt: a batch slower than cleanup.max_batch_time shrinks the next
one, a quick one grows it back; a standby whose replay lag passes its bound halves the batch and
pauses the deletes until it has caught up (half the bound).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed
from aegisctl.maintenance.catalog import Relation
from aegisctl.retention.settings import CleanupSettings
from aegisctl.testhooks import pause_at

if TYPE_CHECKING:
    import datetime as dt

    import psycopg
    from psycopg import sql

    from aegisctl.retention.archive import ArchiveWriter
    from aegisctl.retention.policy import ResolvedPolicy

log = logging.getLogger(__name__)

RETRYABLE = {"55P03", "57014", "40P01", "40001"}  # lock / statement timeout, deadlock, serial.
LOCK_NOT_AVAILABLE = "55P03"
MAX_RETRIES = 6
# Below this expired share of a table, batches walk the age index; above it, heap page ranges.
INDEX_SHARE = 0.1


@dataclass
class BatchStats:
    deleted: int = 0
    batches: int = 0
    longest_batch: float = 0.0
    retries: int = 0
    throttled: int = 0
    throttle_seconds: float = 0.0
    max_lag_bytes: int = 0
    max_lag_seconds: float = 0.0
    interrupted: bool = False
    batch_seconds: list[float] = field(default_factory=list)
    # Expired rows left behind because another session held them locked (SKIP LOCKED), and
    # who held locks on the table when that was noticed.
    skipped_locked: int = 0
    lock_holders: str = ""


@dataclass
class Pacer:
    """Batch size and replication throttling, shared by every table of a run."""

    settings: CleanupSettings
    conn: psycopg.Connection[Any]
    should_stop: Callable[[], bool]
    progress: Callable[[str], None] | None = None
    size: int = 0
    lag_visible: bool = True

    def __post_init__(self) -> None:
        self.size = self.settings.batch_size

    def after_batch(self, elapsed: float, stats: BatchStats) -> None:
        from aegisctl.cluster.members import recheck

        recheck(self.conn)  # on a cluster: still the leader? (RoleChanged stops the run)
        target = self.settings.max_batch_time
        if elapsed > target:
            self.size = max(self.settings.min_batch_size, int(self.size * target / elapsed * 0.8))
        elif elapsed < target / 2:
            self.size = min(self.settings.batch_size, max(self.size + 1, int(self.size * 1.5)))
        self.wait_for_standbys(stats)
        if self.settings.pause > 0:
            self.sleep(self.settings.pause)

    def shrink(self) -> None:
        self.size = max(self.settings.min_batch_size, self.size // 2)

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.should_stop():
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def lag(self) -> tuple[int, float]:
        """(bytes, seconds) of the worst matching standby's replay lag; (0, 0) without one."""
        # A row whose positions are all hidden is a standby this role may not see (it needs
        # pg_monitor); a row that sends WAL but never replays it is a WAL receiver (Barman's
        # pg_receivewal), not a standby: it has no replay lag to wait for.
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE state IS NULL AND sent_lsn IS NULL),"
            "       COALESCE(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::bigint,"
            "       COALESCE(max(extract(epoch FROM replay_lag)), 0)::float8"
            "  FROM pg_stat_replication"
            " WHERE %(name)s::text IS NULL OR application_name = %(name)s",
            {"name": self.settings.replica}).fetchone()
        assert row is not None
        if row[0] and self.lag_visible:
            self.lag_visible = False
            log.warning("standbys are attached but their replay position is not visible to "
                        "this role (grant pg_monitor): replication lag cannot throttle cleanup")
        lag_bytes, lag_seconds = int(row[1]), float(row[2])
        if lag_bytes == 0:
            lag_seconds = 0.0  # replay_lag keeps its last value for a while after catching up
        return lag_bytes, lag_seconds

    def wait_for_standbys(self, stats: BatchStats) -> None:
        lag_bytes, lag_seconds = self.lag()
        stats.max_lag_bytes = max(stats.max_lag_bytes, lag_bytes)
        stats.max_lag_seconds = max(stats.max_lag_seconds, lag_seconds)
        max_bytes, max_seconds = self.settings.max_replica_lag, self.settings.max_replica_lag_time
        if lag_bytes <= max_bytes and lag_seconds <= max_seconds:
            return
        stats.throttled += 1
        self.shrink()
        started = time.monotonic()
        if self.progress:
            self.progress(f"standby replay lag {lag_bytes} bytes / {lag_seconds:.1f}s is above "
                          f"the bound: waiting, next batch {self.size} rows")
        while lag_bytes > max_bytes / 2 or lag_seconds > max_seconds / 2:
            if self.should_stop():
                break
            if time.monotonic() - started > self.settings.lag_wait_limit:
                stats.throttle_seconds += time.monotonic() - started
                raise OperationFailed(
                    f"a standby stayed behind the cleanup.max_replica_lag bound for "
                    f"{self.settings.lag_wait_limit:g}s (lag {lag_bytes} bytes); stopped "
                    "after the committed batches")
            time.sleep(0.2)
            lag_bytes, lag_seconds = self.lag()
        stats.throttle_seconds += time.monotonic() - started


def _batch_session(conn: psycopg.Connection[Any], settings: CleanupSettings,
                   durable: bool) -> None:
    """The batches' timeouts, set once for the session (one round trip less per batch) and
    reset by `_end_batch_session` before anything else runs on the connection. Through a
    transaction pooler they go with every batch's transaction instead."""
    from aegisctl.pooler import override_settings, per_transaction

    if per_transaction(conn):
        override_settings(conn, {
            "lock_timeout": f"{int(settings.lock_timeout * 1000)}ms",
            "statement_timeout": f"{int(settings.statement_timeout * 1000)}ms",
            "synchronous_commit": "on" if durable else "off"})
        return
    conn.execute("SELECT set_config('lock_timeout', %s, false),"
                 "       set_config('statement_timeout', %s, false),"
                 "       set_config('synchronous_commit', %s, false)",
                 (f"{int(settings.lock_timeout * 1000)}ms",
                  f"{int(settings.statement_timeout * 1000)}ms", "on" if durable else "off"))


def _end_batch_session(conn: psycopg.Connection[Any]) -> None:
    from aegisctl.pooler import override_settings, per_transaction

    if per_transaction(conn):
        override_settings(conn, None)
        return
    if not conn.closed and conn.info.transaction_status == 0:
        conn.execute("RESET lock_timeout; RESET statement_timeout; RESET synchronous_commit")


def _returning(archive: ArchiveWriter | None, column: str) -> sql.Composable:
    from psycopg import sql

    if archive is not None:
        return sql.SQL("RETURNING {}.{}, to_jsonb({})::text").format(
            sql.Identifier("t"), sql.Identifier(column), sql.Identifier("t"))
    return sql.SQL("RETURNING {}.{}").format(sql.Identifier("t"), sql.Identifier(column))


def choose_index(conn: psycopg.Connection[Any], policy: ResolvedPolicy, relation: Relation,
                 cutoff: dt.datetime) -> bool:
    """Walk the age index when the planner expects a small share of the table to expire."""
    import json as _json

    from psycopg import sql

    if not policy.indexed:
        return False
    where, params = policy.condition("t", cutoff)
    plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM ONLY {} AS t WHERE {}")
                        .format(relation.ident(), where), params).fetchone()
    row = conn.execute("SELECT GREATEST(reltuples, 0) FROM pg_class WHERE oid = %s",
                       (relation.oid,)).fetchone()
    if plan is None or row is None:
        return True
    doc = plan[0] if not isinstance(plan[0], str) else _json.loads(plan[0])
    estimate, total = float(doc[0]["Plan"]["Plan Rows"]), float(row[0])
    return total <= 0 or estimate / total < INDEX_SHARE


def delete_expired(conn: psycopg.Connection[Any], policy: ResolvedPolicy, relation: Relation,
                   cutoff: dt.datetime, pacer: Pacer, archive: ArchiveWriter | None,
                   stats: BatchStats) -> str:
    """Delete every expired, non-exempt row of `relation` (a table or one leaf partition) in
    batches, until none is left or a stop is asked for (then after the current batch).
    Returns the method used (index | pages)."""
    from psycopg import sql

    use_index = choose_index(conn, policy, relation, cutoff)
    skip_locked = bool(policy.referenced_by)
    where, params = policy.condition("t", cutoff)
    col = sql.Identifier("t", policy.column)
    returning = _returning(archive, policy.column)
    position: Any = None
    block, last_block, pages = 0, 0, 1
    density = 1.0  # expired rows per page, learnt as batches go
    if not use_index:
        row = conn.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int,"
                           " GREATEST(reltuples / NULLIF(relpages, 0), 1) FROM pg_class"
                           " WHERE oid = %s", (relation.oid, relation.oid)).fetchone()
        assert row is not None
        last_block, rows_per_page = int(row[0]), float(row[1] or 50)
        density = rows_per_page / 2
        if archive is None:
            returning = sql.SQL("")  # nothing to read back: the row count is enough
    retries = 0
    _batch_session(conn, pacer.settings, durable=archive is not None)
    try:
        while not pacer.should_stop():
            n = pacer.size
            lock = sql.SQL(" FOR UPDATE SKIP LOCKED") if skip_locked else sql.SQL("")
            if use_index:
                bound = sql.SQL(" AND {} >= %(position)s").format(col) if position is not None \
                    else sql.SQL("")
                chooser = sql.SQL("SELECT t.ctid FROM ONLY {rel} AS t WHERE {where}{bound}"
                                  " ORDER BY {col} LIMIT %(limit)s{lock}").format(
                    rel=relation.ident(), where=where, bound=bound, col=col, lock=lock)
                statement = sql.SQL("DELETE FROM ONLY {rel} AS t WHERE t.ctid = ANY(ARRAY({chooser}))"
                                    " {returning}").format(rel=relation.ident(), chooser=chooser,
                                                           returning=returning)
                values = {**params, "position": position, "limit": n}
            else:
                if block >= last_block:
                    break
                # Never more than 20 batches' worth of pages at once, so a stretch without
                # expired rows cannot make one batch read half the table.
                pages = max(1, min(int(n / max(density, 0.05)), int(20 * n / rows_per_page) + 1))
                in_range = sql.SQL("t.ctid >= %(lo)s::tid AND t.ctid < %(hi)s::tid AND {where}"
                                   ).format(where=where)
                if skip_locked:
                    statement = sql.SQL(
                        "DELETE FROM ONLY {rel} AS t WHERE t.ctid = ANY(ARRAY(SELECT t.ctid FROM"
                        " ONLY {rel} AS t WHERE {in_range}{lock})) {returning}").format(
                        rel=relation.ident(), in_range=in_range, lock=lock, returning=returning)
                else:
                    statement = sql.SQL("DELETE FROM ONLY {rel} AS t WHERE {in_range} {returning}"
                                        ).format(rel=relation.ident(), in_range=in_range,
                                                 returning=returning)
                values = {**params, "lo": f"({block},0)", "hi": f"({block + pages},0)"}
            started = time.perf_counter()
            mark, archived = (archive.mark() if archive is not None else 0), 0
            try:
                with conn.transaction():
                    cursor = conn.execute(statement, values)
                    rows = cursor.fetchall() if cursor.description else []
                    count = len(rows) if cursor.description else max(cursor.rowcount, 0)
                    if archive is not None and rows:
                        archive.write([r[1] for r in rows])
                        archived = len(rows)
                        pause_at("cleanup.batch-archived")  # archived, not yet committed
            except BaseException as exc:
                if archive is not None and archived:
                    archive.rollback(mark, archived)  # the commit failed: forget the batch
                if not isinstance(exc, Exception):
                    raise
                from aegisctl.cluster.members import connection_lost

                lost = connection_lost(conn, exc)  # the leader went away mid-batch
                if lost is not None:
                    raise lost from None
                if getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE and not skip_locked:
                    # A row lock held by another session: from now on skip locked rows.
                    skip_locked = True
                    stats.retries += 1
                    log.info("%s: a row is locked by another session; skipping locked rows",
                             relation.qualified)
                    continue
                if getattr(exc, "sqlstate", None) in RETRYABLE and retries < MAX_RETRIES:
                    retries += 1
                    stats.retries += 1
                    pacer.shrink()
                    log.info("%s: batch retried smaller (%s)", relation.qualified,
                             str(exc).splitlines()[0])
                    pacer.sleep(min(5.0, 0.2 * 2**retries))
                    continue
                raise
            elapsed = time.perf_counter() - started
            retries = 0
            stats.batches += 1
            stats.batch_seconds.append(elapsed)
            stats.longest_batch = max(stats.longest_batch, elapsed)
            stats.deleted += count
            if use_index:
                if not rows:
                    break
                position = max(r[0] for r in rows)
            else:
                block += pages
                density = 0.5 * density + 0.5 * (count / pages)
            if pacer.progress and stats.batches % 20 == 0:
                pacer.progress(f"{policy.name}: {stats.deleted} rows deleted from "
                               f"{relation.qualified} ({stats.batches} batches, now {pacer.size}/batch)")
            pacer.after_batch(elapsed, stats)
    finally:
        _end_batch_session(conn)
    stats.interrupted = stats.interrupted or pacer.should_stop()
    if skip_locked and not stats.interrupted:
        left = count_expired(conn, policy, relation, cutoff)
        if left:
            stats.skipped_locked += left
            stats.lock_holders = stats.lock_holders or row_lock_holders(conn, relation)
    return "index" if use_index else "pages"


def row_lock_holders(conn: psycopg.Connection[Any], relation: Relation) -> str:
    """Sessions that hold row locks in the table (their RowShare or stronger table lock shows
    them; row locks themselves are not listed anywhere), described for the report."""
    rows = conn.execute(
        "SELECT a.pid, a.state, now() - coalesce(a.xact_start, a.query_start),"
        "       left(a.query, 160)"
        "  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.relation = %s AND l.granted AND l.pid <> pg_backend_pid()"
        "   AND l.mode IN ('RowShareLock', 'RowExclusiveLock')"
        " GROUP BY 1, 2, 3, 4 ORDER BY 3 DESC NULLS LAST LIMIT 3", (relation.oid,)).fetchall()
    return "; ".join(f"pid {pid} ({state}, for {age.total_seconds():.0f}s): "
                     f"{' '.join((query or '').split())[:160]}" for pid, state, age, query in rows)


def count_expired(conn: psycopg.Connection[Any], policy: ResolvedPolicy, relation: Relation,
                  cutoff: dt.datetime, only: bool = True) -> int:
    from psycopg import sql

    where, params = policy.condition("t", cutoff)
    row = conn.execute(sql.SQL("SELECT count(*) FROM {only}{rel} AS t WHERE {where}").format(
        only=sql.SQL("ONLY ") if only else sql.SQL(""), rel=relation.ident(), where=where),
        params).fetchone()
    return int(row[0]) if row else 0
