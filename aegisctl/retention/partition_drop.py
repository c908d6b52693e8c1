"""`cleanup run` on a table range-partitioned on the policy's column: whole expired partitions
are detached and dropped (archived first when the policy archives), the rest is left to the
batches.

The point of dropping a month instead of deleting it is that the cost does not grow with the
rows, so the fixed cost around the DETACH and DROP is kept to a few round trips: the catalog
is read in one query (partitions.partition_state), the expired partitions are marked in one
statement, detached, counted in one query and dropped in one DROP TABLE. No scan decides
whether a partition may go: its range proves every row is older than the cutoff, and only a
policy with exemptions (keep, keep_referenced_by) looks for one exempt row (EXISTS, which
stops at the first).

The rows reported are exact: counted after the DETACH (nothing can be inserted through the
table any more), or by the archive that wrote them. With `cleanup.partition_row_counts:
estimate` a dropped partition's rows are the planner's estimate (pg_class.reltuples, no scan)
and the report says they are estimated.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.maintenance.catalog import Relation
from aegisctl.maintenance.runner import MaintContext, Step, run_locked
from aegisctl.retention import partitions as parts
from aegisctl.retention.archive import PartitionArchive

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from aegisctl.retention.policy import ResolvedPolicy
    from aegisctl.retention.service import PolicyResult

log = logging.getLogger(__name__)


@dataclass
class PartitionArchived:
    partition: str
    archive: str
    rows: int
    written: bool  # False: an interrupted run had completed it; not written again
    uploaded: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "archive": self.archive, "rows": self.rows,
                "written_by": "this run" if self.written else "an interrupted run",
                "uploaded": self.uploaded}


@dataclass
class PartitionArchives:
    root: Path
    policy: str


def _union(queries: list[sql.Composable]) -> sql.Composed:
    from psycopg import sql

    return sql.SQL(" UNION ALL ").join(queries)


def _with_exempt_rows(conn: psycopg.Connection[Any], policy: ResolvedPolicy,
                      candidates: list[parts.Partition], cutoff: dt.datetime) -> set[int]:
    """The oids of candidates holding a row the policy keeps (one query for all; without
    exemptions none can, and nothing is read)."""
    from psycopg import sql

    if not candidates or not (policy.keep or policy.referenced_by):
        return set()
    where, params = policy.condition("t", cutoff)
    rows = conn.execute(_union([
        sql.SQL("SELECT {}::oid, EXISTS (SELECT 1 FROM {} AS t WHERE NOT ({}))").format(
            sql.Literal(p.relation.oid), p.relation.ident(), where) for p in candidates]),
        params).fetchall()
    return {int(r[0]) for r in rows if r[1]}


def _count(conn: psycopg.Connection[Any], relations: list[Relation]) -> dict[int, int]:
    """Exact row counts, one query for all."""
    from psycopg import sql

    if not relations:
        return {}
    rows = conn.execute(_union([
        sql.SQL("SELECT {}::oid, count(*) FROM {}").format(sql.Literal(r.oid), r.ident())
        for r in relations])).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def _expired_whole(conn: psycopg.Connection[Any], policy: ResolvedPolicy,
                   state: parts.PartitionState, cutoff: dt.datetime) -> list[parts.Partition]:
    """Partitions that can go whole: their range ends at or before the cutoff (a range
    partition holds no NULL key), a plain table, and no exempt row in them."""
    if state.referenced:
        return []
    candidates = [p for p in state.partitions if p.upper is not None and p.upper <= cutoff
                  and p.relation.kind == "r" and not p.detach_pending]
    exempt = _with_exempt_rows(conn, policy, candidates, cutoff)
    return [p for p in candidates if p.relation.oid not in exempt]


def dry_run_partitions(conn: psycopg.Connection[Any], policy: ResolvedPolicy,
                       result: PolicyResult) -> None:
    """What a run would drop, with the exact rows (a dry run counts)."""
    assert result.cutoff is not None
    state = parts.partition_state(conn, policy.table)
    whole = _expired_whole(conn, policy, state, result.cutoff)
    counts = _count(conn, [p.relation for p in whole])
    for partition in whole:
        result.partitions_dropped.append(partition.relation.qualified)
        result.partition_rows += counts.get(partition.relation.oid, 0)


def drop_expired_partitions(conn: psycopg.Connection[Any], policy: ResolvedPolicy,
                            result: PolicyResult, maint: MaintContext,
                            archives: PartitionArchives | None, run: str,
                            exact_counts: bool = True) -> list[Relation]:
    """Finish what interrupted runs left, drop wholly expired partitions; the leaves still to
    batch-delete."""
    from psycopg import sql

    assert result.cutoff is not None
    parent = policy.table
    state = parts.partition_state(conn, parent)
    pending = [p for p in state.partitions if p.detach_pending]
    for partition in pending:  # first, so that it is finished below as an orphan
        run_locked(maint, sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(
            parent.ident(), partition.relation.ident()), Step("", partition.relation.qualified))
    if pending:
        state = parts.partition_state(conn, parent)
    for orphan in state.orphans:
        archive_and_drop(conn, orphan.relation, orphan.token, result, maint, archives)
    detached: list[parts.Partition] = []
    if not maint.should_stop():
        whole = _expired_whole(conn, policy, state, result.cutoff)
        detached = _detach(conn, parent, whole, state.has_default, run, result, maint)
        _drop(conn, detached, run, result, maint, archives, exact_counts)
    gone = {p.relation.oid for p in detached}
    later = {p.relation.oid for p in state.partitions
             if p.bound != "DEFAULT" and p.lower is not None and p.lower >= result.cutoff}
    # A partition starting at or after the cutoff cannot hold an expired row: not scanned.
    return [leaf for leaf in state.leaves if leaf.oid not in gone | later]


def _detach(conn: psycopg.Connection[Any], parent: Relation, whole: list[parts.Partition],
            has_default: bool, run: str, result: PolicyResult,
            maint: MaintContext) -> list[parts.Partition]:
    """Mark each partition as ours (its comment names this run, so a run killed before the
    DROP is finished by the next one), then detach it: CONCURRENTLY when PostgreSQL allows it
    (no DEFAULT partition), else in the marking transaction itself. The detached ones."""
    from psycopg import sql

    if not whole:
        return []
    comment = sql.Literal(parts.mark_comment(parent, run))
    marks = [sql.SQL("COMMENT ON TABLE {} IS {}").format(p.relation.ident(), comment)
             for p in whole]
    names = ", ".join(p.relation.qualified for p in whole)
    if has_default:
        # DETACH without CONCURRENTLY takes ACCESS EXCLUSIVE on the table for milliseconds:
        # one transaction marks and detaches them all (so none is detached unmarked).
        statements = [s for p, mark in zip(whole, marks, strict=True) for s in (
            mark, sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                parent.ident(), p.relation.ident()))]
        step = Step("", names)
        if run_locked(maint, sql.SQL("; ").join(statements), step):
            return list(whole)
        result.notes.append(f"{names}: could not detach ({step.detail}); batch-deleting "
                            "instead")
        return []
    mark = Step("", names)
    if not run_locked(maint, sql.SQL("; ").join(marks), mark):
        result.notes.append(f"{names}: {mark.detail}; batch-deleting instead")
        return []
    detached = []
    for partition in whole:
        rel = partition.relation
        if maint.should_stop():
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(rel.ident()))
            continue
        step = Step("", rel.qualified)
        if run_locked(maint, sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                parent.ident(), rel.ident()), step):
            detached.append(partition)
            continue
        if step.status != "cancelled":
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(rel.ident()))
            result.notes.append(f"{rel.qualified}: could not detach ({step.detail}); "
                                "batch-deleting instead")
    return detached


def _drop(conn: psycopg.Connection[Any], detached: list[parts.Partition], run: str,
          result: PolicyResult, maint: MaintContext, archives: PartitionArchives | None,
          exact_counts: bool) -> None:
    """Archive (when asked) and count the detached partitions, then drop them in one
    statement."""
    from psycopg import sql

    if not detached:
        return
    started = time.perf_counter()
    rows: dict[int, int] = {}
    estimated: set[int] = set()
    if archives is not None:
        for partition in detached:
            rows[partition.relation.oid] = _archive(conn, partition.relation, run, result,
                                                    archives)
    else:
        counted = [p.relation for p in detached if exact_counts or p.reltuples < 0]
        rows = _count(conn, counted)
        for partition in detached:
            if partition.relation.oid not in rows:
                rows[partition.relation.oid] = int(partition.reltuples)
                estimated.add(partition.relation.oid)
    relations = [p.relation for p in detached]
    drop = Step("", ", ".join(r.qualified for r in relations))
    if not run_locked(maint, sql.SQL("DROP TABLE {}").format(
            sql.SQL(", ").join(r.ident() for r in relations)), drop):
        result.error = f"dropping detached partitions {drop.target}: {drop.detail} (the " \
                       "next run finishes it)"
        return
    for rel in relations:
        result.partitions_dropped.append(rel.qualified)
        result.partition_rows += rows[rel.oid]
        if rel.oid in estimated:
            result.partition_rows_exact = False
    log.info("dropped expired partitions %s (%d rows%s) in %.2fs", drop.target,
             sum(rows.values()), ", estimated" if estimated else "",
             time.perf_counter() - started)


def _archive(conn: psycopg.Connection[Any], rel: Relation, token: str, result: PolicyResult,
             archives: PartitionArchives) -> int:
    """Write a detached partition's archive (unless an interrupted run completed it: `token`
    names the run that detached it, and so the file); its rows."""
    from psycopg import sql

    target = PartitionArchive(archives.root, archives.policy, rel.name, token)
    written = not target.complete
    if written:
        with conn.transaction(), conn.cursor(name="aegisctl_archive") as cur:
            cur.execute(sql.SQL("SELECT to_jsonb(t)::text FROM {} AS t").format(rel.ident()))
            rows = target.write_all([r[0] for r in chunk]
                                    for chunk in iter(lambda: cur.fetchmany(5000), []))
    else:
        rows = _count(conn, [rel])[rel.oid]
    result.partition_archives.append(
        PartitionArchived(rel.qualified, str(target.final), rows, written))
    return rows


def archive_and_drop(conn: psycopg.Connection[Any], rel: Relation, token: str,
                     result: PolicyResult, maint: MaintContext,
                     archives: PartitionArchives | None) -> None:
    """A partition an interrupted run detached: archived (once) when the policy archives,
    counted exactly, dropped."""
    from psycopg import sql

    started = time.perf_counter()
    rows = _archive(conn, rel, token, result, archives) if archives is not None \
        else _count(conn, [rel])[rel.oid]
    drop = Step("", rel.qualified)
    if run_locked(maint, sql.SQL("DROP TABLE {}").format(rel.ident()), drop):
        result.partitions_dropped.append(rel.qualified)
        result.partition_rows += rows
        log.info("dropped expired partition %s (%d rows) in %.1fs", rel.qualified, rows,
                 time.perf_counter() - started)
    else:
        result.error = f"dropping detached partition {rel.qualified}: {drop.detail} (the " \
                       "next run finishes it)"
