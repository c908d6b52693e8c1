"""`diag vectors`: how much of each vector index is in shared buffers (pg_buffercache), its
size against shared_buffers and effective_cache_size, and what that means for searches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg

BUFFERCACHE = "pg_buffercache"


def cache_consequence(size: int, buffered: int | None, shared_buffers: int,
                      effective_cache_size: int) -> str:
    """One sentence: what the index's size and residency mean for the next searches."""
    loaded = "" if buffered is None else f" ({buffered / size:.0%} of it is in shared buffers)" \
        if size else ""
    if size > effective_cache_size:
        return (f"larger than effective_cache_size ({format_bytes(effective_cache_size)}): it "
                f"cannot stay in memory, so searches wait on disk reads{loaded}; add memory, or "
                "make the index smaller (halfvec, a smaller m)")
    if size > shared_buffers:
        return (f"larger than shared_buffers ({format_bytes(shared_buffers)}): the rest of it "
                f"can live only in the OS cache{loaded}; searches are fast while the OS keeps it "
                "and slow after a restart; raise shared_buffers if the host has the memory")
    if buffered is None:
        return (f"fits in shared_buffers ({size / shared_buffers:.0%} of "
                f"{format_bytes(shared_buffers)}); install {BUFFERCACHE} to see how much is "
                "loaded")
    share = buffered / size if size else 1.0
    if share >= 0.9:
        return "fits in shared_buffers and is loaded: searches are served from memory"
    return (f"fits in shared_buffers but only {share:.0%} is loaded: the next searches read the "
            "rest from the OS cache or disk (the slow first query after a restart or restore); "
            "`aegisctl maint prewarm` loads it")


def index_cache(conn: psycopg.Connection[Any], indexes: list[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """(one row per ANN index, notes)."""
    import psycopg
    from psycopg import sql

    row = conn.execute(
        "SELECT pg_size_bytes(current_setting('shared_buffers')), "
        "pg_size_bytes(current_setting('effective_cache_size')),"
        " current_setting('block_size')::int, (SELECT n.nspname FROM pg_extension e JOIN "
        "pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = %s)",
        (BUFFERCACHE,)).fetchone()
    assert row is not None
    shared, effective, block, schema = int(row[0]), int(row[1]), int(row[2]), row[3]
    ann = [i for i in indexes if i["method"] in ("hnsw", "ivfflat")]
    buffered: dict[str, int] = {}
    notes = [f"shared_buffers {format_bytes(shared)}, effective_cache_size "
             f"{format_bytes(effective)}"]
    if schema is None:
        notes.append(f"{BUFFERCACHE} is not installed: `aegisctl ext install {BUFFERCACHE}` "
                     "shows how much of each index is loaded")
    elif ann:
        names = [sql.Identifier(i["schema"], i["index"]).as_string(conn) for i in ann]
        try:
            # A savepoint inside a transaction: the rest of the topic still runs after a
            # refusal (pg_buffercache is for pg_monitor).
            with conn.transaction():
                found = _buffered(conn, schema, names)
        except psycopg.errors.InsufficientPrivilege:
            schema = None
            notes.append(f"{BUFFERCACHE}: this role may not read it (GRANT pg_monitor TO "
                         "it to see how much of each index is loaded)")
            found = []
        by_name = {str(name): int(count) * block for name, count in found}
        buffered = {n: by_name.get(n, 0) for n in names}
    rows = []
    for index, name in zip(ann, [sql.Identifier(i["schema"], i["index"]).as_string(conn)
                                 for i in ann], strict=True):
        size = int(index["size_bytes"])
        loaded = buffered.get(name) if schema is not None else None
        rows.append({
            "schema": index["schema"], "table": index["table"], "index": index["index"],
            "size_bytes": size, "buffered_bytes": loaded,
            "buffered_share": None if loaded is None or not size else round(loaded / size, 4),
            "shared_buffers_share": round(size / shared, 4) if shared else None,
            "effective_cache_share": round(size / effective, 4) if effective else None,
            "consequence": cache_consequence(size, loaded, shared, effective)})
    return rows, notes


def _buffered(conn: psycopg.Connection[Any], schema: str, names: list[str]) -> list[Any]:
    """(index name, shared buffers it holds) for these indexes."""
    from psycopg import sql

    return conn.execute(sql.SQL(
        "SELECT r.name, count(b.bufferid) FROM unnest(%s::text[]) AS r(name) "
        "LEFT JOIN {} b ON b.relfilenode = pg_relation_filenode(r.name::regclass) "
        "AND b.reldatabase = (SELECT oid FROM pg_database WHERE datname = "
        "current_database()) AND b.relforknumber = 0 GROUP BY r.name").format(
        sql.Identifier(schema, "pg_buffercache")), (names,)).fetchall()
