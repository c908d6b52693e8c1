"""Reading memories: show, recent, similar, stats, export."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aegisctl.config import Settings
from aegisctl.errors import OperationFailed
from aegisctl.memory.filters import Filters
from aegisctl.memory.refs import KINDS, TABLES, Kind, MemoryRef, record_from_row
from aegisctl.memory.search import Explain, Hit, semantic_search

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block


def require_schema(conn: psycopg.Connection[Any]) -> int:
    """The database's embedding dimension; a clear error when the memory tables are missing."""
    from aegisctl.schema import database_embedding_dim

    row = conn.execute("SELECT to_regclass('episodic_memory') IS NOT NULL "
                       "AND to_regclass('semantic_memory') IS NOT NULL").fetchone()
    dim = database_embedding_dim(conn)
    if not row or not row[0] or dim is None:
        raise OperationFailed("this database has no memory tables",
                              hint="run aegisctl schema init first")
    from aegisctl.memory import vectors

    vectors.register(conn)
    return dim


def _columns(kind: Kind, embedding: bool) -> Any:
    from psycopg import sql

    names = ["id", *TABLES[kind].columns]
    parts: list[Any] = [sql.Identifier(n) for n in names]
    if embedding:
        parts.append(sql.SQL("embedding::text AS embedding"))
    parts.append(sql.SQL("embedding IS NOT NULL AS has_embedding"))
    return sql.SQL(", ").join(parts)


def _record(kind: Kind, row: dict[str, Any], embedding: bool) -> dict[str, Any]:
    import json

    record = record_from_row(kind, row)
    if embedding:
        text = row.get("embedding")
        record["embedding"] = json.loads(text) if text else None
    else:
        record["has_embedding"] = bool(row.get("has_embedding"))
    return record


def get_memory(conn: psycopg.Connection[Any], ref: MemoryRef,
               embedding: bool = False) -> dict[str, Any]:
    from psycopg import sql
    from psycopg.rows import dict_row

    query = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
        _columns(ref.kind, embedding), sql.Identifier(TABLES[ref.kind].table))
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, (ref.id,)).fetchone()
    if row is None:
        raise OperationFailed(f"no memory {ref}")
    return _record(ref.kind, row, embedding)


def iter_memories(conn: psycopg.Connection[Any], filters: Filters, *, newest_first: bool = False,
                  limit: int | None = None, embedding: bool = False
                  ) -> Generator[dict[str, Any], None, None]:
    """Memories matching the filters, kind by kind (export), or newest first (recent)."""
    from psycopg import sql
    from psycopg.rows import dict_row

    kinds = filters.kinds()
    if newest_first:
        rows: list[dict[str, Any]] = []
        for kind in kinds:
            where, params = filters.where(kind)
            info = TABLES[kind]
            query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} DESC NULLS LAST, id DESC "
                            "LIMIT %(lim)s").format(
                _columns(kind, embedding), sql.Identifier(info.table), where,
                sql.Identifier(info.time))
            with conn.cursor(row_factory=dict_row) as cur:
                for row in cur.execute(query, {**params, "lim": limit}).fetchall():
                    rows.append(_record(kind, row, embedding))
        rows.sort(key=lambda r: str(r.get(TABLES[r["kind"]].time) or ""), reverse=True)
        yield from rows[:limit]
        return
    for kind in kinds:
        where, params = filters.where(kind)
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY id").format(
            _columns(kind, embedding), sql.Identifier(TABLES[kind].table), where)
        # A named (server-side) cursor streams a large export instead of loading it all.
        with conn.transaction(), conn.cursor(name=f"export_{kind}", row_factory=dict_row) as cur:
            cur.itersize = 1000
            cur.execute(query, params)
            for row in cur:
                yield _record(kind, row, embedding)


def similar(conn: psycopg.Connection[Any], settings: Settings, ref: MemoryRef, dim: int,
            filters: Filters, limit: int, with_plan: bool = False
            ) -> tuple[dict[str, Any], list[Hit], Explain]:
    """Neighbours of a stored memory by its own embedding: no provider needed."""
    from psycopg import sql

    source = get_memory(conn, ref)
    row = conn.execute(sql.SQL("SELECT embedding FROM {} WHERE id = %s").format(
        sql.Identifier(TABLES[ref.kind].table)), (ref.id,)).fetchone()
    if row is None or row[0] is None:
        raise OperationFailed(f"memory {ref} has no embedding yet",
                              hint="run aegisctl memory reembed --missing")
    explain = Explain(mode="semantic")
    hits = semantic_search(conn, settings, filters.kinds(), filters, row[0], dim, limit,
                           explain, with_plan, exclude=(ref.kind, ref.id))
    for hit in hits:
        hit.score = hit.similarity or 0.0
    return source, hits, explain


@dataclass
class MemoryStats:
    embedding_dim: int
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"embedding_dim": self.embedding_dim, "kinds": self.kinds}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table
        from aegisctl.units import format_bytes

        blocks: list[Block] = [Table(
            ["kind", Column("memories", "number"), Column("without embedding", "number"),
             Column("older recipe", "number"), "oldest", "newest", Column("size", "number")],
            [(k, v["count"], v["without_embedding"], v["old_recipe"], (v["oldest"] or "-")[:10],
              (v["newest"] or "-")[:10], format_bytes(v["total_bytes"]))
             for k, v in self.kinds.items()],
            title=f"memory (embedding dimension {self.embedding_dim})")]
        for kind, entry in self.kinds.items():
            for key, counts in entry.items():
                if key.startswith("by_") and counts:
                    blocks.append(Table([key[3:], Column("memories", "number")],
                                        list(counts.items()), title=f"{kind} by {key[3:]}"))
        old = sum(int(v.get("old_recipe", 0)) for v in self.kinds.values())
        if old:
            blocks.append(Note(f"{old} memories were embedded with an older embedding recipe: "
                               "`aegisctl memory reembed --stale` re-embeds them",
                               style="yellow"))
        return blocks


def memory_stats(conn: psycopg.Connection[Any], dim: int) -> MemoryStats:
    from psycopg import sql

    from aegisctl.memory.recipe import RECIPE_VERSION

    stats = MemoryStats(embedding_dim=dim)
    for kind in KINDS:
        info = TABLES[kind]
        table, time_col = sql.Identifier(info.table), sql.Identifier(info.time)
        row = conn.execute(sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE embedding IS NULL), min({t}), max({t}), "
            "pg_total_relation_size({reg}::regclass), "
            "count(*) FILTER (WHERE embedding IS NOT NULL AND embedding_recipe < {recipe}), "
            "count(*) FILTER (WHERE embedding IS NOT NULL AND embedding_recipe IS NULL) "
            "FROM {table}").format(
            t=time_col, table=table, reg=sql.Literal(info.table),
            recipe=sql.Literal(RECIPE_VERSION))).fetchone()
        assert row is not None
        entry: dict[str, Any] = {
            "count": int(row[0]), "without_embedding": int(row[1]),
            # Embedded by aegisctl with an older recipe (`memory reembed --stale` redoes them),
            # and embedded outside aegisctl (recipe unknown: left alone unless a full reembed).
            "old_recipe": int(row[5]), "unknown_recipe": int(row[6]),
            "embedding_recipe": RECIPE_VERSION,
            "oldest": row[2].isoformat() if row[2] else None,
            "newest": row[3].isoformat() if row[3] else None,
            "total_bytes": int(row[4]),
        }
        group = ("event_type", "importance") if kind == "episodic" else ("category",)
        for column in group:
            counts = conn.execute(sql.SQL(
                "SELECT {c}::text, count(*) FROM {table} GROUP BY 1 ORDER BY 2 DESC, 1").format(
                c=sql.Identifier(column), table=table)).fetchall()
            entry[f"by_{column}"] = {str(k) if k is not None else "(none)": int(n)
                                     for k, n in counts}
        stats.kinds[kind] = entry
    return stats


def export_memories(conn: psycopg.Connection[Any], filters: Filters, embedding: bool,
                    path: Path | None, fmt: str = "jsonl") -> int:
    """Write the matching memories to `path` (a temporary name renamed into place when
    complete) or to stdout: JSON lines (what import reads), or one JSON document."""
    import os
    import sys
    import tempfile

    if path is None:
        return _write_export(conn, filters, embedding, sys.stdout, fmt)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            count = _write_export(conn, filters, embedding, handle, fmt)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _write_export(conn: psycopg.Connection[Any], filters: Filters, embedding: bool,
                  stream: IO[str], fmt: str) -> int:
    from aegisctl.output import to_json_line

    count = 0
    if fmt == "json":
        stream.write('{"memories": [\n')
    records = iter_memories(conn, filters, embedding=embedding)
    try:
        for record in records:
            record.pop("has_embedding", None)
            if fmt == "json" and count:
                stream.write(",\n")
            stream.write(to_json_line(record) + ("" if fmt == "json" else "\n"))
            count += 1
    finally:
        records.close()  # ends the server-side cursor's transaction now, not at GC
    if fmt == "json":
        stream.write(f'\n], "count": {count}}}\n')
    stream.flush()
    return count
