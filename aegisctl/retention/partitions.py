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
    upper: dt.datetime | None  # exclusive upper bound; None for MAXVALUE / DEFAULT / unknown
    detach_pending: bool


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


def partitions(conn: psycopg.Connection[Any], parent: Relation) -> list[Partition]:
    """Direct partitions with their upper bounds (compared in UTC, as the cutoff is)."""
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind, pg_total_relation_size(c.oid),"
        "       pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending"
        "  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE i.inhparent = %s ORDER BY c.relname", (parent.oid,)).fetchall()
    result = []
    for r in rows:
        bound = str(r[5] or "")
        upper = None
        match = _RANGE.match(bound)
        if match:
            literal = _literal(match.group(2))
            if literal is not None:
                upper = _quick_timestamptz(literal)
            if literal is not None and upper is None:
                value = conn.execute("SELECT %s::text::timestamptz", (literal,)).fetchone()
                upper = value[0] if value else None
        result.append(Partition(Relation(int(r[0]), str(r[1]), str(r[2]), str(r[3]),
                                         int(r[4] or 0)), bound, upper, bool(r[6])))
    return result


def leaves(conn: psycopg.Connection[Any], parent: Relation) -> list[Relation]:
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind, 0"
        "  FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE t.isleaf ORDER BY c.relname", (parent.oid,)).fetchall()
    return [Relation(int(r[0]), str(r[1]), str(r[2]), str(r[3]), 0) for r in rows]


def has_default_partition(conn: psycopg.Connection[Any], parent: Relation) -> bool:
    row = conn.execute("SELECT partdefid <> 0 FROM pg_partitioned_table WHERE partrelid = %s",
                       (parent.oid,)).fetchone()
    return bool(row and row[0])


def is_referenced(conn: psycopg.Connection[Any], oids: list[int]) -> bool:
    """Does a foreign key point at one of these tables? (Then rows are deleted, not dropped,
    so the key's ON DELETE action runs.)"""
    return bool(conn.execute("SELECT 1 FROM pg_constraint WHERE contype = 'f'"
                             " AND confrelid = ANY(%s::oid[])", (oids,)).fetchone())


def orphans(conn: psycopg.Connection[Any], parent: Relation) -> list[Orphan]:
    """Partitions an interrupted run detached but did not drop (marked by their comment:
    `mark_comment`, or the bare MARK of earlier versions)."""
    base = MARK + parent.qualified
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind, pg_total_relation_size(c.oid), d.text"
        "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,"
        "       LATERAL (SELECT obj_description(c.oid, 'pg_class') AS text) d"
        " WHERE c.relkind IN ('r', 'p') AND left(d.text, length(%s)) = %s"
        "   AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)"
        " ORDER BY c.relname", (base, base)).fetchall()
    found = []
    for r in rows:
        rest = str(r[5])[len(base):]
        match = _RUN.fullmatch(rest)
        if rest and not match:
            continue  # another parent whose name starts like ours
        relation = Relation(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4] or 0))
        found.append(Orphan(relation, match.group(1) if match else f"oid{relation.oid}"))
    return found
