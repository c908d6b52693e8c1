"""Range-partitioned tables: whole expired partitions are detached and dropped (archived first
when the policy archives), never emptied row by row; only partitions that straddle the cutoff
(or hold exempt rows) are batch-deleted.

DETACH runs CONCURRENTLY when the table has no default partition (PostgreSQL refuses it
otherwise), with a short lock_timeout and retries either way. Before detaching, the partition
gets a comment naming it as ours and the run that detached it, so a run interrupted between
DETACH and DROP is finished by the next one; a DETACH CONCURRENTLY interrupted half-way is
completed with FINALIZE. The run named in the comment also names the partition's archive file
(archive.partition_archive), so a partition whose archive was completed before the run died is
dropped by the next run without being archived a second time.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.maintenance.catalog import Relation

if TYPE_CHECKING:
    import psycopg

MARK = "aegisctl cleanup: expired partition detached from "
_RUN = re.compile(r" \(run ([0-9A-Za-z_-]+)\)$")


def mark_comment(parent: Relation, run: str) -> str:
    """The comment put on a partition before it is detached."""
    return f"{MARK}{parent.qualified} (run {run})"


@dataclass
class Orphan:
    """A partition an interrupted run detached but did not drop."""

    relation: Relation
    token: str  # names its archive: the detaching run's id (older marks: the table's oid)


_RANGE = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$", re.DOTALL)


@dataclass
class Partition:
    relation: Relation
    bound: str  # FOR VALUES ... as the server prints it
    lower: dt.datetime | None  # inclusive lower bound; None for MINVALUE / DEFAULT / unknown
    upper: dt.datetime | None  # exclusive upper bound; None for MAXVALUE / DEFAULT / unknown
    detach_pending: bool
    reltuples: float = -1.0  # the planner's row estimate; -1 when never vacuumed or analyzed


@dataclass
class PartitionState:
    """One partitioned table as `cleanup run` needs it, read in one round trip."""

    partitions: list[Partition]
    orphans: list[Orphan]
    referenced: bool  # a foreign key points at the table: rows are deleted, never dropped
    has_default: bool
    leaves: list[Relation]


def _literal(text: str) -> str | None:
    text = text.strip()
    if len(text) >= 2 and text[0] == "'" and text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return None


def _quick_timestamptz(literal: str) -> dt.datetime | None:
    """A bound with its offset, read without a round trip (the server casts the rest)."""
    try:
        moment = dt.datetime.fromisoformat(literal)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _bounds(conn: psycopg.Connection[Any],
            bounds: list[str]) -> list[tuple[dt.datetime | None, dt.datetime | None]]:
    """(lower, upper) of each `FOR VALUES FROM (..) TO (..)`, compared in UTC as the cutoff
    is. Literals without an offset (timestamp and date columns) are cast by the server in the
    session's time zone (UTC during cleanup), all in one round trip."""
    literals: list[tuple[str | None, str | None]] = []
    for bound in bounds:
        match = _RANGE.match(bound)
        literals.append((_literal(match.group(1)), _literal(match.group(2))) if match
                        else (None, None))
    slow = sorted({v for pair in literals for v in pair
                   if v is not None and _quick_timestamptz(v) is None})
    cast: dict[str, dt.datetime | None] = {}
    if slow:
        rows = conn.execute("SELECT v, v::timestamptz FROM unnest(%s::text[]) AS v",
                            (slow,)).fetchall()
        cast = {str(r[0]): r[1] for r in rows}

    def value(literal: str | None) -> dt.datetime | None:
        if literal is None:
            return None
        quick = _quick_timestamptz(literal)
        return quick if quick is not None else cast.get(literal)

    return [(value(lo), value(hi)) for lo, hi in literals]


def _relation(row: list[Any]) -> Relation:
    return Relation(int(row[0]), str(row[1]), str(row[2]), str(row[3]), 0)


def partition_state(conn: psycopg.Connection[Any], parent: Relation) -> PartitionState:
    """Direct partitions with their bounds, orphans of interrupted runs, whether a key points
    at the table, whether it has a DEFAULT partition, and its leaves."""
    from aegisctl.resources import sql_dir

    query = (sql_dir() / "retention" / "partition_state.sql").read_text()
    base = MARK + parent.qualified
    row = conn.execute(query, {"parent": parent.oid, "mark": base}).fetchone()
    assert row is not None
    listed = list(row[0])
    bounds = _bounds(conn, [str(r[4] or "") for r in listed])
    partitions = [Partition(_relation(r), str(r[4] or ""), lower, upper, bool(r[5]),
                            float(r[6]) if r[6] is not None else -1.0)
                  for r, (lower, upper) in zip(listed, bounds, strict=True)]
    found = []
    for r in row[1]:
        rest = str(r[4])[len(base):]
        match = _RUN.fullmatch(rest)
        if rest and not match:
            continue  # another parent whose name starts like ours
        relation = _relation(r)
        found.append(Orphan(relation, match.group(1) if match else f"oid{relation.oid}"))
    return PartitionState(partitions, found, bool(row[2]), bool(row[3]),
                          [_relation(r) for r in row[4]])
