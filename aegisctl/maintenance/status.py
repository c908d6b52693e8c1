"""`maint status`: per table dead rows, last (auto)vacuum and analyze, an estimated bloat, and
what a DBA would run next, and why."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.resources import sql_dir
from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block

# Thresholds for a recommendation (autovacuum's own defaults are 20 % dead / 10 % changed; a
# table this far past them means autovacuum is not keeping up).
DEAD_FRACTION = 0.2
MIN_DEAD_ROWS = 1000
ANALYZE_FRACTION = 0.1
BLOAT_FRACTION = 0.5
MIN_BLOAT_BYTES = 10 * 1024 * 1024
# Page and tuple overheads for the bloat estimate: 24-byte page header, 4-byte line pointer and
# 24-byte tuple header per row.
PAGE_HEADER = 24
ROW_OVERHEAD = 28


@dataclass
class TableStatus:
    schema: str
    table: str
    live_rows: int
    dead_rows: int
    modified_since_analyze: int
    last_vacuum: dt.datetime | None
    last_analyze: dt.datetime | None
    table_bytes: int
    index_bytes: int
    bloat_bytes: int | None
    invalid_indexes: int
    hnsw_indexes: int
    recommendation: str = "nothing to do"
    reasons: list[str] = field(default_factory=list)
    # None, or where autovacuum is switched off: "table" (autovacuum_enabled=false) | "server"
    autovacuum_disabled: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def dead_fraction(self) -> float:
        total = self.live_rows + self.dead_rows
        return self.dead_rows / total if total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"table": self.qualified, "live_rows": self.live_rows,
                "dead_rows": self.dead_rows, "dead_fraction": round(self.dead_fraction, 4),
                "modified_since_analyze": self.modified_since_analyze,
                "last_vacuum": self.last_vacuum, "last_analyze": self.last_analyze,
                "table_bytes": self.table_bytes, "index_bytes": self.index_bytes,
                "estimated_bloat_bytes": self.bloat_bytes,
                "invalid_indexes": self.invalid_indexes, "hnsw_indexes": self.hnsw_indexes,
                "autovacuum_disabled": self.autovacuum_disabled,
                "recommendation": self.recommendation, "reasons": self.reasons}


@dataclass
class MaintStatus:
    tables: list[TableStatus]

    def to_json(self) -> dict[str, Any]:
        return {"tables": [t.to_json() for t in self.tables]}

    def to_view(self) -> list[Block]:
        from aegisctl.diagnostics.result import format_seconds
        from aegisctl.output import Column, Note, Table

        now = dt.datetime.now(dt.UTC)

        def when(value: dt.datetime | None) -> str:
            # An age fits a narrow terminal; the JSON form keeps the timestamps.
            if value is None:
                return "never"
            return format_seconds(max(0, round((now - value).total_seconds()))) + " ago"

        rows: list[Sequence[Any]] = [(t.qualified, t.live_rows, t.dead_rows, f"{100 * t.dead_fraction:.0f}%",
                 when(t.last_vacuum), when(t.last_analyze), format_bytes(t.table_bytes),
                 "-" if t.bloat_bytes is None else format_bytes(t.bloat_bytes),
                 t.recommendation) for t in self.tables]
        todo = [t for t in self.tables if t.reasons]
        blocks: list[Block] = [Table(
            [Column("table", "id"), Column("live", "number"), Column("dead", "number"),
             Column("dead%", "number"), Column("last vacuum", "number"),
             Column("last analyze", "number"),
             Column("size", "number"), Column("bloat~", "number"), Column("run", "text")],
            rows, title="tables", empty="no user tables")]
        for t in todo:
            blocks.append(Note(f"{t.qualified}: {t.recommendation} — {'; '.join(t.reasons)}"))
        if not todo and self.tables:
            blocks.append(Note("every table looks healthy: nothing to run"))
        return blocks


def _latest(*values: dt.datetime | None) -> dt.datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def estimate_bloat(relpages: int, reltuples: float, row_width: float | None, fillfactor: int,
                   block_size: int) -> int | None:
    """Bytes beyond what the live rows need, from statistics (no table scan); None without
    statistics."""
    if row_width is None or reltuples is None or reltuples < 0 or relpages <= 0:
        return None
    per_page = max(1.0, (block_size - PAGE_HEADER) * fillfactor / 100 / (row_width + ROW_OVERHEAD))
    expected = math.ceil(reltuples / per_page)
    return max(0, relpages - expected) * block_size


def recommend(t: TableStatus) -> None:
    actions: list[str] = []
    if t.invalid_indexes:
        actions.append("maint reindex --table " + t.qualified)
        t.reasons.append(f"{t.invalid_indexes} invalid index(es) (a failed concurrent build)")
    if t.dead_rows >= MIN_DEAD_ROWS and t.dead_fraction >= DEAD_FRACTION:
        if t.hnsw_indexes:
            actions.append(f"maint vector-index --table {t.qualified}")
            t.reasons.append("many dead rows on a table with an HNSW index: rebuild it "
                             "concurrently before vacuuming (vacuuming HNSW is slow)")
        actions.append(f"maint vacuum --analyze --table {t.qualified}")
        t.reasons.append(f"{t.dead_rows} dead rows ({100 * t.dead_fraction:.0f}%): "
                         + _why_not_vacuumed(t))
    elif t.last_analyze is None and (t.live_rows or t.table_bytes > 0):
        # Never analyzed: the activity statistics may not count its rows yet (a bulk load,
        # a statistics reset), but a table with pages has something to analyze.
        actions.append(f"maint analyze --table {t.qualified}")
        t.reasons.append("never analyzed: the planner guesses its row count and value "
                         "distribution" + ("" if t.autovacuum_disabled is None else
                                           f" ({_why_not_vacuumed(t)})"))
    elif t.live_rows and t.modified_since_analyze >= ANALYZE_FRACTION * max(t.live_rows, 1):
        actions.append(f"maint analyze --table {t.qualified}")
        t.reasons.append("never analyzed" if t.last_analyze is None else
                         f"{t.modified_since_analyze} rows changed since the last analyze: "
                         "the planner's statistics are stale")
    if t.bloat_bytes is not None and t.bloat_bytes >= MIN_BLOAT_BYTES and \
            t.bloat_bytes >= BLOAT_FRACTION * t.table_bytes:
        actions.append(f"maint vacuum --full --table {t.qualified}")
        t.reasons.append(f"about {format_bytes(t.bloat_bytes)} of {format_bytes(t.table_bytes)} "
                         "is free space plain VACUUM cannot return to the OS; VACUUM FULL "
                         "locks the table while it rewrites it: plan a quiet moment")
    if actions:
        t.recommendation = "; ".join(dict.fromkeys(actions))


def _why_not_vacuumed(t: TableStatus) -> str:
    if t.autovacuum_disabled == "table":
        return ("autovacuum is disabled for this table (autovacuum_enabled=false): vacuum it "
                "on a schedule, or re-enable it (ALTER TABLE ... RESET (autovacuum_enabled))")
    if t.autovacuum_disabled == "server":
        return "autovacuum is off on the server (autovacuum = off): vacuum on a schedule"
    return "autovacuum is behind"


def table_status(conn: psycopg.Connection[Any]) -> MaintStatus:
    from psycopg.rows import dict_row

    query = (sql_dir() / "maintenance" / "table_status.sql").read_text()
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query).fetchall()
    tables = []
    for r in rows:
        t = TableStatus(
            schema=r["schema"], table=r["table"], live_rows=int(r["live_rows"]),
            dead_rows=int(r["dead_rows"]),
            modified_since_analyze=int(r["modified_since_analyze"]),
            last_vacuum=_latest(r["last_vacuum"], r["last_autovacuum"]),
            last_analyze=_latest(r["last_analyze"], r["last_autoanalyze"]),
            table_bytes=int(r["table_bytes"]), index_bytes=int(r["index_bytes"]),
            bloat_bytes=estimate_bloat(int(r["relpages"]), float(r["reltuples"]),
                                       None if r["row_width"] is None else float(r["row_width"]),
                                       int(r["fillfactor"]), int(r["block_size"])),
            invalid_indexes=int(r["invalid_indexes"]), hnsw_indexes=int(r["hnsw_indexes"]),
            autovacuum_disabled=r["autovacuum_disabled"])
        recommend(t)
        tables.append(t)
    return MaintStatus(tables)
