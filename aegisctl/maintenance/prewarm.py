"""`maint prewarm`: load the vector indexes (and their tables) into memory with pg_prewarm.

After a restart, a restore or a drill the first semantic searches read the HNSW graph from
disk page by page; pg_prewarm reads it in one sequential pass instead. Indexes come first (a
search walks the graph), then their tables and TOAST tables (the rows and embeddings a search
returns). What fits in shared_buffers is loaded there (mode `buffer`); the rest is only handed
to the operating system's cache (`prefetch`, or `read` where prefetch is not supported), so
prewarming never evicts the indexes it has just loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed
from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block

EXTENSION = "pg_prewarm"
EVENTS = ("server_start", "restore_test", "drill")

# Every HNSW/IVFFlat index of a user table, then those tables and their TOAST tables, and
# whether this role may prewarm each (pg_prewarm checks SELECT on an index's table, and on
# a TOAST table itself).
_RELATIONS = """
WITH idx AS (
    SELECT i.indexrelid, i.indrelid FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
    JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
    WHERE am.amname IN ('hnsw', 'ivfflat') AND i.indisvalid
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
)
SELECT oid::regclass::text, kind, pg_relation_size(oid),
       has_table_privilege(acl, 'SELECT') FROM (
    SELECT indexrelid AS oid, 'index' AS kind, 1 AS ord, indrelid AS acl FROM idx
    UNION SELECT indrelid, 'table', 2, indrelid FROM idx
    UNION SELECT t.reltoastrelid, 'toast', 3, t.reltoastrelid FROM idx
          JOIN pg_class t ON t.oid = idx.indrelid WHERE t.reltoastrelid <> 0
) r ORDER BY ord, 1
"""


@dataclass
class PrewarmedRelation:
    relation: str
    kind: str  # index | table | toast
    size_bytes: int
    mode: str  # buffer | prefetch | read
    blocks: int | None = None
    seconds: float | None = None
    status: str = "planned"  # planned | done | failed | skipped (this role may not read it)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PrewarmResult:
    database: str
    dry_run: bool
    shared_buffers: int
    relations: list[PrewarmedRelation] = field(default_factory=list)
    seconds: float = 0.0
    event: str | None = None  # what triggered it (server_start...), None when asked for
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.status == "failed" for r in self.relations)

    @property
    def loaded_bytes(self) -> int:
        return sum(r.size_bytes for r in self.relations if r.status == "done")

    def summary(self) -> str:
        done = [r for r in self.relations if r.status == "done"]
        return (f"prewarmed {len(done)} relation(s), {format_bytes(self.loaded_bytes)}, in "
                f"{self.seconds:.1f}s" + ("" if self.ok else
                                          f"; {len(self.relations) - len(done)} failed"))

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "dry_run": self.dry_run,
                "shared_buffers": self.shared_buffers, "ok": self.ok,
                "relations": [r.to_json() for r in self.relations],
                "loaded_bytes": self.loaded_bytes, "seconds": round(self.seconds, 3),
                "event": self.event, "notes": self.notes}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        rows: list[Sequence[Any]] = [
            (r.relation, r.kind, format_bytes(r.size_bytes), r.mode, r.status, r.blocks,
             None if r.seconds is None else round(r.seconds, 2), r.detail)
            for r in self.relations]
        title = "prewarm" + (" (dry run: nothing loaded)" if self.dry_run else "")
        blocks: list[Block] = [Table(
            [Column("relation", "id"), Column("kind", "id"), Column("size", "number"),
             Column("mode", "id"), Column("status", "id"), Column("blocks", "number"),
             Column("seconds", "number"), Column("detail", "text")], rows, title=title,
            empty="no HNSW or IVFFlat index in this database")]
        if not self.dry_run and self.relations:
            blocks.append(Note(self.summary()))
        blocks += [Note(n) for n in self.notes]
        return blocks


def prewarm_schema(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                       "ON n.oid = e.extnamespace WHERE e.extname = %s", (EXTENSION,)).fetchone()
    return str(row[0]) if row else None


def missing_hint(database: str) -> str:
    return (f"{EXTENSION} is not installed in database {database}: run `aegisctl ext install "
            f"{EXTENSION}` (a contrib module; CREATE EXTENSION needs a superuser)")


def prewarm_vectors(conn: psycopg.Connection[Any], *, tables: bool = True,
                    dry_run: bool = False, event: str | None = None) -> PrewarmResult:
    import psycopg
    from psycopg import sql

    row = conn.execute("SELECT current_database(), pg_size_bytes(current_setting("
                       "'shared_buffers'))").fetchone()
    assert row is not None
    result = PrewarmResult(str(row[0]), dry_run, int(row[1]), event=event)
    schema = prewarm_schema(conn)
    if schema is None and not dry_run:
        raise OperationFailed(missing_hint(result.database))
    budget = result.shared_buffers
    for name, kind, size, readable in conn.execute(_RELATIONS).fetchall():
        if kind != "index" and not tables:
            continue
        if not readable:
            # pg_prewarm needs SELECT on the relation itself; TOAST tables grant it to no
            # one but their owner, so a reading role would fail there every time.
            result.relations.append(PrewarmedRelation(
                str(name), str(kind), int(size), "-", status="skipped",
                detail="this role may not read it"))
            continue
        # What no longer fits in shared_buffers goes to the OS cache only.
        mode = "buffer" if size <= budget else "prefetch"
        budget -= size if mode == "buffer" else 0
        result.relations.append(PrewarmedRelation(str(name), str(kind), int(size), mode))
    skipped = [r for r in result.relations if r.status == "skipped"]
    if skipped:
        result.notes.append(f"{len(skipped)} relation(s) skipped: this role may not read them "
                            "(run maint prewarm as their owner or a superuser to load them)")
    if schema is None:
        result.notes.append(missing_hint(result.database))
    if dry_run or schema is None:
        return result
    started = time.perf_counter()
    function = sql.Identifier(schema, "pg_prewarm")
    for item in result.relations:
        if item.status == "skipped":
            continue
        t0 = time.perf_counter()
        for mode in ([item.mode, "read"] if item.mode == "prefetch" else [item.mode]):
            try:
                got = conn.execute(sql.SQL("SELECT {}(%s::regclass, %s)").format(function),
                                   (item.relation, mode)).fetchone()
            except psycopg.errors.FeatureNotSupported:
                continue  # prefetch needs posix_fadvise: read instead
            except psycopg.Error as exc:
                item.status, item.detail = "failed", str(exc).strip().splitlines()[0]
                break
            item.mode, item.blocks, item.status = mode, int(got[0]) if got else 0, "done"
            break
        item.seconds = time.perf_counter() - t0
        if item.mode != "buffer" and item.status == "done":
            item.detail = "beyond shared_buffers: loaded into the OS cache only"
    result.seconds = time.perf_counter() - started
    return result


def prewarm_after(event: str, after: list[str], tables: bool,
                  connect: Callable[[], Any]) -> str | None:
    """A status line for a prewarm run after `event` (server_start, restore_test, drill) when
    maintenance.prewarm.after names it; None when it does not. A prewarm that cannot run is
    said in the line, never raised: the operation it follows stands on its own."""
    import psycopg

    from aegisctl.errors import AegisError

    if event not in after:
        return None
    try:
        with connect() as conn:
            result = prewarm_vectors(conn, tables=tables, event=event)
    except (AegisError, psycopg.Error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"after {event}: prewarm skipped: {first}"
    return f"after {event}: {result.summary()}"
