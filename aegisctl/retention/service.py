"""`cleanup run`: every selected policy, checked against the catalog first (a bad policy is a
configuration error before anything is deleted), then deleted in batches or by partition,
archived when asked, followed by a concurrent HNSW rebuild after a large delete and
VACUUM (ANALYZE); the report ends with the erasure horizon."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.config import LoadedConfig
from aegisctl.errors import AegisError, RoleChanged, UsageError
from aegisctl.maintenance.catalog import Relation
from aegisctl.maintenance.runner import (
    MaintContext,
    SideConnect,
    Step,
    ensure_primary,
    run_locked,
)
from aegisctl.paths import archive_root
from aegisctl.retention import partitions as parts
from aegisctl.retention.archive import (
    ArchiveWriteFailed,
    ArchiveWriter,
    run_id,
    upload_pending_archives,
)
from aegisctl.retention.batches import BatchStats, Pacer, count_expired, delete_expired
from aegisctl.retention.emptying import FLAG, refusal, warning, would_empty
from aegisctl.retention.horizon import ErasureHorizon, erasure_horizon, physical_holding
from aegisctl.retention.partition_drop import (
    PartitionArchived,
    PartitionArchives,
    drop_expired_partitions,
    dry_run_partitions,
)
from aegisctl.retention.policy import ResolvedPolicy, resolve_policy
from aegisctl.retention.settings import effective_policies

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block

log = logging.getLogger(__name__)


@dataclass
class PolicyResult:
    name: str
    table: str
    column: str
    max_age: str
    cutoff: dt.datetime | None = None
    method: str = ""  # batches by index | batches by page range | partitions + batches
    status: str = "planned"  # dry-run | done | interrupted | failed | skipped
    expired_rows: int | None = None  # dry run: what would go
    deleted_rows: int = 0
    partitions_dropped: list[str] = field(default_factory=list)
    partition_rows: int = 0
    # False when some of partition_rows are the planner's estimate, not a count
    # (cleanup.partition_row_counts: estimate).
    partition_rows_exact: bool = True
    stats: BatchStats = field(default_factory=BatchStats)
    archive: str | None = None
    archived_rows: int = 0
    uploaded: str | None = None
    partition_archives: list[PartitionArchived] = field(default_factory=list)
    reindexed: list[str] = field(default_factory=list)
    vacuumed: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    emptying: str | None = None  # the warning when the policy would delete every row

    @property
    def total_deleted(self) -> int:
        return self.deleted_rows + self.partition_rows

    @property
    def deleted_shown(self) -> str | int:
        """The deleted rows as the table shows them: `~N` when partly estimated."""
        return self.total_deleted if self.partition_rows_exact else f"~{self.total_deleted}"

    @property
    def partition_archived_rows(self) -> int:
        """Rows this run wrote into partition archives (part of archived_rows)."""
        return sum(a.rows for a in self.partition_archives if a.written)

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "policy": self.name, "table": self.table, "column": self.column,
            "max_age": self.max_age, "cutoff": self.cutoff, "method": self.method,
            "status": self.status, "expired_rows": self.expired_rows,
            "deleted_rows": self.total_deleted, "batch_deleted_rows": self.deleted_rows,
            "partitions_dropped": self.partitions_dropped,
            "partition_rows": self.partition_rows,
            "partition_rows_exact": self.partition_rows_exact,
            "deleted_rows_exact": self.partition_rows_exact, "batches": s.batches,
            "longest_batch_seconds": round(s.longest_batch, 4), "retries": s.retries,
            "skipped_locked_rows": s.skipped_locked, "lock_holders": s.lock_holders or None,
            "throttled": s.throttled, "throttle_seconds": round(s.throttle_seconds, 2),
            "max_replica_lag_bytes": s.max_lag_bytes,
            "max_replica_lag_seconds": round(s.max_lag_seconds, 3),
            "archive": self.archive, "archived_rows": self.archived_rows,
            "uploaded": self.uploaded,
            "partition_archives": [a.to_json() for a in self.partition_archives],
            "reindexed": self.reindexed, "vacuumed": self.vacuumed,
            "error": self.error, "notes": self.notes, "empties_table": bool(self.emptying),
        }


@dataclass
class CleanupReport:
    target: str
    dry_run: bool
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    policies: list[PolicyResult] = field(default_factory=list)
    horizon: ErasureHorizon | None = None
    interrupted: bool = False
    # Why the run stopped before its other policies (an archive that could not be written).
    stopped: str | None = None
    # The stop was a cluster's leader changing under the run (exit 5, not 1).
    role_changed: bool = field(default=False, repr=False)
    uploaded_archives: list[str] = field(default_factory=list)  # keys uploaded by this run
    upload_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.stopped and not self.upload_error \
            and not any(p.status == "failed" for p in self.policies)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "dry_run": self.dry_run, "started_at": self.started_at,
                "finished_at": self.finished_at, "interrupted": self.interrupted,
                "ok": self.ok, "stopped": self.stopped,
                "uploaded_archives": self.uploaded_archives, "upload_error": self.upload_error,
                "policies": [p.to_json() for p in self.policies],
                "deleted_rows": sum(p.total_deleted for p in self.policies),
                "deleted_rows_exact": all(p.partition_rows_exact for p in self.policies),
                "erasure_horizon": self.horizon.to_json() if self.horizon else None}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        def cutoff(p: PolicyResult) -> str:
            return f"{p.cutoff.astimezone(dt.UTC):%Y-%m-%d %H:%M}" if p.cutoff else "-"

        if self.dry_run:
            table = Table([Column("policy", "id"), Column("table", "id"), "max age",
                           "cutoff (UTC)", Column("would delete", "number"), "method"],
                          [(p.name, p.table, p.max_age, cutoff(p), p.expired_rows, p.method)
                           for p in self.policies],
                          title=f"cleanup dry run on {self.target}: nothing deleted",
                          empty="no cleanup policies configured (cleanup.policies)")
        else:
            table = Table([Column("policy", "id"), Column("table", "id"), "cutoff (UTC)",
                           Column("deleted", "number"), Column("batches", "number"),
                           Column("longest", "number"), "status"],
                          [(p.name, p.table, cutoff(p), p.deleted_shown, p.stats.batches,
                            f"{p.stats.longest_batch:.2f}s", p.status) for p in self.policies],
                          title=f"cleanup on {self.target}",
                          empty="no cleanup policies configured (cleanup.policies)")
        blocks: list[Block] = [table]
        for p in self.policies:
            lines = list(p.notes)
            if p.partitions_dropped:
                verb = "would drop" if self.dry_run else "dropped"
                rows = f"{p.partition_rows} rows" if p.partition_rows_exact else (
                    f"about {p.partition_rows} rows, the planner's estimate: "
                    "cleanup.partition_row_counts is estimate")
                lines.append(f"{verb} partition(s) {', '.join(p.partitions_dropped)} ({rows})")
            if p.archive:
                lines.append(f"archived {p.archived_rows - p.partition_archived_rows} rows to "
                             f"{p.archive}" + (f" (uploaded: {p.uploaded})" if p.uploaded
                                                 else ""))
            for a in p.partition_archives:
                what = f"archived partition {a.partition} ({a.rows} rows) to {a.archive}" \
                    if a.written else (f"partition {a.partition}: its archive {a.archive} was "
                                       "completed by an interrupted run; not written again")
                lines.append(what + (f" (uploaded: {a.uploaded})" if a.uploaded else ""))
            if p.stats.skipped_locked:
                lines.append(f"skipped {p.stats.skipped_locked} expired row(s) locked by "
                             f"another session (left for the next run)"
                             + (f"; holders: {p.stats.lock_holders}" if p.stats.lock_holders
                                else ""))
            if p.stats.throttled:
                lines.append(f"throttled {p.stats.throttled} time(s) for standby lag "
                             f"({p.stats.throttle_seconds:.1f}s waiting)")
            if p.reindexed:
                lines.append(f"rebuilt concurrently before vacuuming: {', '.join(p.reindexed)}")
            if p.error:
                lines.append(f"failed: {p.error}")
            blocks += [Note(f"{p.name}: {line}") for line in lines]
        if self.uploaded_archives:
            blocks.append(Note(f"uploaded {len(self.uploaded_archives)} cleanup archive(s) to "
                               "the backup remote"))
        if self.upload_error:
            blocks.append(Note(f"{self.upload_error}; kept locally, the next run uploads it"))
        if self.interrupted:
            blocks.append(Note("interrupted: every committed batch stays deleted, nothing is "
                               "half-done; run it again to finish"))
        if self.horizon:
            blocks.append(Note(("if run: " if self.dry_run else "") + self.horizon.sentence))
        return blocks


@dataclass
class CleanupOptions:
    policies: list[str] | None = None
    dry_run: bool = False
    now: dt.datetime | None = None  # default: the server's clock
    # A policy that would delete every row of its table runs only with this (--allow-emptying):
    # that is more often a wrong max_age or column than an intent.
    allow_emptying: bool = False


def select_policies(loaded: LoadedConfig, names: list[str] | None) -> list[str]:
    configured = effective_policies(loaded.settings.cleanup, loaded.settings.partitions)
    if names:
        unknown = [n for n in names if n not in configured]
        if unknown:
            raise UsageError(f"unknown cleanup policy {', '.join(unknown)} (configured: "
                             f"{', '.join(configured) or 'none'})")
        return names
    return [n for n, p in configured.items() if p.enabled]


def run_cleanup(loaded: LoadedConfig, target_name: str, conn: psycopg.Connection[Any],
                options: CleanupOptions, *, should_stop: Callable[[], bool] = lambda: False,
                progress: Callable[[str], None] | None = None,
                side_connect: SideConnect | None = None,
                on_phase: Callable[[str], None] | None = None,
                maint_conn: psycopg.Connection[Any] | None = None) -> CleanupReport:
    """`on_phase("delete" | "maintenance")` tells the caller which phase runs: batches are
    never cancelled (a stop waits for the batch), the rebuild and VACUUM after them may be.
    `progress` gets status lines (batches, throttling, the rebuild and VACUUM steps);
    with `side_connect` too, the rebuild and VACUUM also report their phase from
    pg_stat_progress_* as `maint` does. With `maint_conn` (when `conn` goes through a
    transaction pooler) the rebuild, VACUUM and partition detaches run there."""
    settings = loaded.settings
    started = dt.datetime.now(dt.UTC)
    from aegisctl.pooler import session_set

    session_set(conn, {"TimeZone": "UTC"})
    names = select_policies(loaded, options.policies)
    if not options.dry_run:
        ensure_primary(conn, "cleanup run")
    policies = effective_policies(settings.cleanup, settings.partitions)
    resolved = [resolve_policy(conn, n, policies[n]) for n in names]
    now_row = conn.execute("SELECT now()").fetchone()
    now = options.now or (now_row[0] if now_row else dt.datetime.now(dt.UTC))
    emptying = {p.name: warning(p) for p in resolved if would_empty(conn, p, p.cutoff(now))}
    if emptying and not options.dry_run and not options.allow_emptying:
        raise refusal(list(emptying.values()))  # before anything is deleted
    report = CleanupReport(target=target_name, dry_run=options.dry_run, started_at=started)
    pacer = Pacer(settings.cleanup, conn, should_stop, progress)
    maint = MaintContext(conn=maint_conn or conn, settings=settings.maintenance, should_stop=should_stop,
                         progress=progress, side_connect=side_connect)
    run = run_id(dt.datetime.now(dt.UTC))
    for policy in resolved:
        result = PolicyResult(policy.name, policy.table.qualified, policy.column,
                              str(policy.age), cutoff=policy.cutoff(now))
        report.policies.append(result)
        result.emptying = emptying.get(policy.name)
        if result.emptying:
            result.notes.append(f"warning: {result.emptying}" + (
                "" if options.allow_emptying else f"; a real run needs {FLAG}"))
        if should_stop() or report.stopped:
            result.status = "skipped"
            continue
        try:
            if options.dry_run:
                _dry_run(conn, policy, result)
            else:
                _apply(loaded, target_name, conn, policy, result, pacer, maint, run,
                       on_phase or (lambda phase: None))
        except ArchiveWriteFailed as exc:
            # A full archive folder fails every later policy that archives too: stop here.
            result.status, result.error = "failed", str(exc)
            report.stopped = str(exc)
        except RoleChanged as exc:
            # The leader went away: no later policy may run on this connection, and the
            # batches committed so far stand (the report says how many).
            result.status, result.error = "failed", str(exc)
            report.stopped, report.role_changed = str(exc), True
        except AegisError as exc:
            result.status, result.error = "failed", str(exc)
        except Exception as exc:
            if conn.closed or type(exc).__module__.split(".")[0] != "psycopg":
                raise
            result.status, result.error = "failed", str(exc).strip().splitlines()[0]
            if conn.info.transaction_status != 0:  # not idle: leave the failed transaction
                conn.rollback()
    report.interrupted = should_stop()
    if not options.dry_run and settings.backup.remote is not None \
            and settings.cleanup.upload_archives:
        _upload_archives(loaded, target_name, report)
    report.horizon = erasure_horizon(settings.backup, target_name, now,
                                     physical_holding(loaded, target_name, now))
    report.finished_at = dt.datetime.now(dt.UTC)
    return report


def _upload_archives(loaded: LoadedConfig, target_name: str, report: CleanupReport) -> None:
    """Every archive not yet uploaded goes now: this run's, and those that runs killed,
    stopped or cut off from the server left behind."""
    uploads = upload_pending_archives(loaded.settings, target_name)
    report.uploaded_archives = list(uploads.uploaded.values())
    report.upload_error = uploads.error
    for p in report.policies:
        if p.archive:
            p.uploaded = uploads.uploaded.get(p.archive)
        for done in p.partition_archives:
            done.uploaded = uploads.uploaded.get(done.archive)


def _method(policy: ResolvedPolicy) -> str:
    batches = "batches by index or page range" if policy.indexed else "batches by page range"
    return f"partitions + {batches}" if policy.partitioned_on_column else batches


def _dry_run(conn: psycopg.Connection[Any], policy: ResolvedPolicy,
             result: PolicyResult) -> None:
    assert result.cutoff is not None
    result.method = _method(policy)
    result.status = "dry-run"
    if policy.partitioned_on_column:
        dry_run_partitions(conn, policy, result)
    result.expired_rows = count_expired(conn, policy, policy.table, result.cutoff, only=False)


def _apply(loaded: LoadedConfig, target_name: str, conn: psycopg.Connection[Any],
           policy: ResolvedPolicy, result: PolicyResult, pacer: Pacer, maint: MaintContext,
           run: str, on_phase: Callable[[str], None]) -> None:
    settings = loaded.settings
    assert result.cutoff is not None
    result.method = _method(policy)
    archive = None
    partition_archives: PartitionArchives | None = None
    if policy.settings.archive:
        root = archive_root(settings, target_name)
        archive = ArchiveWriter(root, policy.name, policy.table.name, run)
        partition_archives = PartitionArchives(root, policy.name)
        for path in archive.recover_leftovers():
            result.notes.append(f"an earlier run was killed while archiving: kept its file as "
                                f"{path} (its last batch may not have been deleted)")
    rows_before = policy.rows_estimate
    methods: set[str] = set()
    try:
        relations = [policy.table]
        if policy.table.kind == "p":
            relations = drop_expired_partitions(
                conn, policy, result, maint, partition_archives, run,
                exact_counts=settings.cleanup.partition_row_counts == "exact") \
                if policy.partitioned_on_column else parts.partition_state(conn, policy.table).leaves
        for relation in relations:
            if pacer.should_stop():
                break
            used = delete_expired(conn, policy, relation, result.cutoff, pacer, archive,
                                  result.stats)
            methods.add(used)
        result.deleted_rows = result.stats.deleted
        if methods:
            batches = " and ".join(f"batches by {'index' if m == 'index' else 'page range'}"
                                   for m in sorted(methods))
            result.method = f"partitions + {batches}" if policy.partitioned_on_column \
                else batches
    finally:
        result.deleted_rows = result.stats.deleted
        if archive is not None:
            result.archived_rows = archive.rows + result.partition_archived_rows
            closed = archive.close()  # raises when it does not read back: keeps its tmp name
            result.archive = str(closed) if closed else None
    if pacer.should_stop():
        result.status = "interrupted"
        result.notes.append("stopped after a committed batch; rebuild and vacuum skipped")
        return
    on_phase("maintenance")
    try:
        _after_delete(policy, result, maint, rows_before, settings.cleanup.reindex_fraction,
                      settings.cleanup.vacuum)
    finally:
        on_phase("delete")
    if maint.should_stop():
        result.status = "interrupted"
        result.notes.append("interrupted during the rebuild/VACUUM after the deletes (the "
                            "deletes are committed); `maint vacuum --analyze` finishes it")
        return
    result.status = "failed" if result.error else "done"


def _after_delete(policy: ResolvedPolicy, result: PolicyResult, maint: MaintContext,
                  rows_before: int, fraction: float, vacuum: bool) -> None:
    """pgvector's advice: after a mass delete, rebuild HNSW concurrently, then vacuum."""
    from psycopg import sql

    if not result.deleted_rows:
        return
    deleted = f"after deleting {result.deleted_rows} rows"
    if policy.hnsw_indexes and result.deleted_rows >= fraction * max(rows_before, 1):
        for index in policy.hnsw_indexes:
            step = Step("", index.qualified)
            if run_locked(maint, sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(index.ident()),
                          step, announce=f"{policy.name}: rebuilding {index.qualified} "
                          f"concurrently {deleted}"):
                result.reindexed.append(index.qualified)
            else:
                if step.status == "cancelled":
                    _drop_leftovers(maint, policy.table)
                else:
                    result.error = f"rebuilding {index.qualified}: {step.detail}"
                return
    if vacuum and not maint.should_stop():
        step = Step("", policy.table.qualified)
        if run_locked(maint, sql.SQL("VACUUM (ANALYZE) {}").format(policy.table.ident()), step,
                      announce=f"{policy.name}: VACUUM (ANALYZE) {policy.table.qualified} "
                      f"{deleted}"):
            result.vacuumed = True
        elif step.status == "failed":
            result.error = f"VACUUM (ANALYZE) {policy.table.qualified}: {step.detail}"


def _drop_leftovers(maint: MaintContext, table: Relation) -> None:
    """A cancelled REINDEX CONCURRENTLY leaves an invalid *_ccnew index: drop it now."""
    from psycopg import sql

    from aegisctl.maintenance.reindex import LEFTOVER, invalid_indexes

    for index, _table in invalid_indexes(maint.conn, [table.oid]):
        if LEFTOVER.search(index.name):
            run_locked(maint, sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                index.ident()), Step("", index.qualified))
