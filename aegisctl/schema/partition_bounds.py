"""Monthly range partitions: month arithmetic (UTC), bound literals, partition names, and the
partitions of a table read back from the catalog with both bounds.

Shared by `schema partition` (the conversion), `maint partitions` (create ahead, default rows)
and the `check` of future partitions.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.maintenance.catalog import Relation

if TYPE_CHECKING:
    import psycopg

TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
MAX_IDENT = 63  # NAMEDATALEN - 1: longer names are truncated by the server

_RANGE = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$", re.DOTALL)


def month_start(moment: dt.datetime) -> dt.datetime:
    moment = moment.astimezone(dt.UTC)
    return dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    """A month start `months` later (moment must be a month start)."""
    index = moment.year * 12 + moment.month - 1 + months
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def months_between(lower: dt.datetime, upper: dt.datetime) -> list[dt.datetime]:
    """The month starts m with lower <= m < upper (both month starts)."""
    result, current = [], lower
    while current < upper:
        result.append(current)
        current = add_months(current, 1)
    return result


def bound_literal(moment: dt.datetime, column_type: str) -> str:
    """A partition bound for a column of this type, in UTC: months start at 00:00 UTC."""
    moment = moment.astimezone(dt.UTC)
    if column_type == "date":
        return moment.strftime("%Y-%m-%d")
    if column_type == "timestamp without time zone":
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S+00")


def short_name(base: str, suffix: str) -> str:
    """base + suffix within PostgreSQL's 63 bytes (the base is cut, the suffix kept)."""
    room = MAX_IDENT - len(suffix.encode())
    cut = base.encode()[:room].decode(errors="ignore")
    return cut + suffix


def month_partition_name(table: str, month: dt.datetime) -> str:
    return short_name(table, f"_p{month:%Y_%m}")


def default_partition_name(table: str) -> str:
    return short_name(table, "_default")


@dataclass
class RangePartition:
    relation: Relation
    lower: dt.datetime | None  # None: MINVALUE
    upper: dt.datetime | None  # None: MAXVALUE
    is_default: bool = False
    rows: int = 0  # estimate (reltuples), exact for the default partition when counted

    @property
    def months(self) -> int | None:
        """How many whole months it spans (None for an open end)."""
        if self.lower is None or self.upper is None:
            return None
        return (self.upper.year - self.lower.year) * 12 + self.upper.month - self.lower.month


@dataclass
class PartitionKey:
    column: str
    column_type: str


def partition_key(conn: psycopg.Connection[Any], oid: int) -> PartitionKey | None:
    """The column of a table partitioned by RANGE on one plain date/time column, else None."""
    row = conn.execute(
        "SELECT p.partstrat, p.partnatts, a.attname, format_type(a.atttypid, NULL)"
        "  FROM pg_partitioned_table p"
        "  LEFT JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]"
        " WHERE p.partrelid = %s", (oid,)).fetchone()
    if not row or row[0] != "r" or row[1] != 1 or row[2] is None or row[3] not in TIME_TYPES:
        return None
    return PartitionKey(str(row[2]), str(row[3]))


def _to_utc(conn: psycopg.Connection[Any], literal: str, column_type: str) -> dt.datetime | None:
    text = literal.strip()
    if text.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    if not (len(text) >= 2 and text[0] == "'" and text[-1] == "'"):
        return None
    value = text[1:-1].replace("''", "'")
    quick = _parse_bound(value, column_type)
    if quick is not None:
        return quick
    if column_type == "timestamp with time zone":
        row = conn.execute("SELECT %s::text::timestamptz", (value,)).fetchone()
    else:  # timestamp and date bounds are read as UTC, as they were written
        row = conn.execute("SELECT (%s::text::timestamp) AT TIME ZONE 'UTC'", (value,)).fetchone()
    return row[0].astimezone(dt.UTC) if row and row[0] is not None else None


def _parse_bound(value: str, column_type: str) -> dt.datetime | None:
    """The server's own rendering of a bound, read without a round trip when it is plain ISO
    (it is, for bounds aegisctl wrote); anything else (infinity, BC) is left to the server."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if column_type == "timestamp with time zone":
        return moment.astimezone(dt.UTC) if moment.tzinfo else None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else None


def range_partitions(conn: psycopg.Connection[Any], parent_oid: int,
                     key: PartitionKey) -> list[RangePartition]:
    """Direct partitions in bound order (MINVALUE first, the default partition last)."""
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind, pg_total_relation_size(c.oid),"
        "       pg_get_expr(c.relpartbound, c.oid), greatest(c.reltuples, 0)::bigint"
        "  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE i.inhparent = %s", (parent_oid,)).fetchall()
    result = []
    for r in rows:
        relation = Relation(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4] or 0))
        bound = str(r[5] or "")
        if bound == "DEFAULT":
            result.append(RangePartition(relation, None, None, True, int(r[6])))
            continue
        match = _RANGE.match(bound)
        if not match:
            continue
        lower = _to_utc(conn, match.group(1), key.column_type)
        upper = _to_utc(conn, match.group(2), key.column_type)
        result.append(RangePartition(relation, lower, upper, False, int(r[6])))
    far_past = dt.datetime.min.replace(tzinfo=dt.UTC)
    result.sort(key=lambda p: (p.is_default, p.lower or far_past))
    return result


def gaps(parts: list[RangePartition]) -> list[tuple[dt.datetime | None, dt.datetime | None]]:
    """Holes between consecutive ranges (rows there go to the default partition or fail)."""
    ranged = [p for p in parts if not p.is_default]
    holes: list[tuple[dt.datetime | None, dt.datetime | None]] = []
    for before, after in itertools.pairwise(ranged):
        if before.upper is not None and after.lower is not None and before.upper < after.lower:
            holes.append((before.upper, after.lower))
    return holes
