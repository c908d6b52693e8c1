"""The semantic signal: nearest memories by cosine distance, served by the HNSW index (iterative
scans under a filter), or exact when the planner estimates the filtered set at most
`search.exact_below` rows."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aegisctl.config import Settings
from aegisctl.memory.filters import Filters
from aegisctl.memory.refs import TABLES, Kind, record_from_row
from aegisctl.memory.search.hits import Explain, Hit, PathInfo, coverage
from aegisctl.memory.search.pg import (
    FTS_CONFIG,
    RELTUPLES_TTL,
    pgvector_version,
    plan_lines,
    query_vector,
    remember,
    select_list,
    session_state,
)

if TYPE_CHECKING:
    import psycopg
    from pgvector import Vector


def _order_expr(dim: int, alias: str = "") -> tuple[Any, Any]:
    """(indexed expression, query cast) — the same expression the HNSW index is built on."""
    from psycopg import sql

    from aegisctl.schema import embedding_index_expr

    column = sql.Identifier(alias, "embedding") if alias else sql.Identifier("embedding")
    if embedding_index_expr(dim) == "embedding":
        return column, sql.SQL("%(q)b")
    half = sql.SQL("::halfvec({})").format(sql.Literal(dim))
    return sql.Composed([sql.SQL("("), column, half, sql.SQL(")")]), sql.SQL("%(q)b") + half


def estimate_rows(conn: psycopg.Connection[Any], kind: Kind, where: Any,
                  params: dict[str, Any], filtered: bool = True) -> int:
    """The planner's estimate of how many rows with an embedding match the filters; without
    filters, the table's row count from its statistics (no planning pass)."""
    from psycopg import sql

    if not filtered:
        cached = session_state(conn).get(("reltuples", kind))
        if cached is not None and time.monotonic() - cached[1] < RELTUPLES_TTL:
            return int(cached[0])
        row = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                           (TABLES[kind].table,)).fetchone()
        if row is not None and int(row[0]) >= 0:
            session_state(conn)[("reltuples", kind)] = (int(row[0]), time.monotonic())
            return int(row[0])
    # The same filter again on this connection (an agent's loop, the scheduler) reuses the
    # planner's answer for RELTUPLES_TTL seconds instead of planning it once more.
    key = ("estimate", kind, where.as_bytes(conn),
           repr(sorted((k, v) for k, v in params.items() if k not in ("q", "k"))))
    cached = session_state(conn).get(key)
    if cached is not None and time.monotonic() - cached[1] < RELTUPLES_TTL:
        return int(cached[0])
    query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE embedding IS NOT NULL AND {}"
                    ).format(sql.Identifier(TABLES[kind].table), where)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    remember(conn, key, (estimate, time.monotonic()), 256)
    return estimate


_TERMS_SQL = (
    "SELECT '''' || replace(replace(l, E'\\\\', E'\\\\\\\\'), '''', '''''') || '''' AS t "
    "FROM unnest(tsvector_to_array(to_tsvector({cfg}::regconfig, %(text)s))) AS l")


def _lexeme_columns(kind: Kind, query_text: str | None) -> Any:
    """Two extra output columns when the hits' coverage is wanted: the row's lexemes, and the
    query's (an InitPlan: stemmed once per statement, not once per row). Coverage is then a set
    intersection in Python, which costs the server nothing per row."""
    from psycopg import sql

    if query_text is None:
        return sql.SQL("")
    return sql.SQL(", tsvector_to_array({tsv}) AS lexemes_, (SELECT tsvector_to_array("
                   "to_tsvector({cfg}::regconfig, %(text)s))) AS qlex_").format(
        tsv=sql.Identifier(TABLES[kind].tsv), cfg=sql.Literal(FTS_CONFIG))


def _annotated(kind: Kind, query: Any) -> Any:
    """`query` wrapped so highlight markers are computed for its rows only."""
    from psycopg import sql

    terms = sql.SQL(_TERMS_SQL).format(cfg=sql.Literal(FTS_CONFIG))
    marked = sql.SQL(
        "(SELECT ts_headline({cfg}::regconfig, h.{text}, string_agg(t.t, ' | ')::tsquery, "
        "'HighlightAll=true, StartSel=\x1e, StopSel=\x1f') FROM ({terms}) AS t "
        "HAVING count(*) > 0)").format(cfg=sql.Literal(FTS_CONFIG), terms=terms,
                                        text=sql.Identifier(TABLES[kind].text))
    return sql.SQL(
        "SELECT {cols}, h.similarity, h.lexemes_, h.qlex_, {marked} AS marked_ "
        "FROM ({query}) AS h ORDER BY h.similarity DESC, h.id").format(
            cols=select_list(kind, "h"), marked=marked, query=query)


def _semantic_hit(kind: Kind, row: dict[str, Any], query_text: str | None) -> Hit:
    hit = Hit(kind=kind, id=int(row["id"]), record=record_from_row(kind, row),
              similarity=float(row["similarity"]))
    if query_text is not None:
        hit.coverage = coverage(row["qlex_"], row["lexemes_"])
        hit.marked = row.get("marked_")
    return hit


def _semantic_query(conn: psycopg.Connection[Any], kind: Kind, where: Any, dim: int,
                    exact: bool, query_text: str | None, highlight: bool) -> bytes:
    """The semantic statement, composed once per connection and shape: composing it with
    psycopg.sql each time costs a sizeable share of an HNSW search's whole time."""
    from psycopg import sql

    key = ("semantic-sql", kind, dim, exact, query_text is not None, highlight,
           where.as_bytes(conn))
    state = session_state(conn)
    cached = state.get(key)
    if isinstance(cached, bytes):
        return cached
    table = sql.Identifier(TABLES[kind].table)
    extra = _lexeme_columns(kind, query_text)
    if exact:
        # Ordered by the similarity column, not the operator: the HNSW index cannot serve
        # it, the filter's indexes find the rows and each distance is computed once.
        query = sql.SQL(
            "SELECT {cols}, 1 - (embedding <=> %(q)b) AS similarity{extra} FROM {table} "
            "WHERE embedding IS NOT NULL AND {where} "
            "ORDER BY similarity DESC, id LIMIT %(k)s"
        ).format(cols=select_list(kind, binary=True), table=table, where=where, extra=extra)
    else:
        order, qcast = _order_expr(dim)
        query = sql.SQL(
            "SELECT {cols}, 1 - ({order} <=> {qcast}) AS similarity{extra} FROM {table} "
            "WHERE embedding IS NOT NULL AND {where} "
            "ORDER BY {order} <=> {qcast} LIMIT %(k)s"
        ).format(cols=select_list(kind, binary=True), order=order, qcast=qcast, table=table,
                 where=where, extra=extra)
    if query_text is not None and highlight:
        query = _annotated(kind, query)
    composed = query.as_bytes(conn)
    remember(conn, key, composed, 64)
    return composed


def semantic_search(conn: psycopg.Connection[Any], settings: Settings, kinds: Sequence[Kind],
                    filters: Filters, vector: Vector | str, dim: int, limit: int, explain: Explain,
                    with_plan: bool = False, exclude: tuple[str, int] | None = None,
                    query_text: str | None = None, highlight: bool = False) -> list[Hit]:
    """The `limit` nearest memories across `kinds`, most similar first. With `query_text`
    the same statement also measures each hit's coverage (and, with `highlight`, marks its
    matched terms), so semantic mode needs no second round trip."""
    from psycopg import sql
    from psycopg.rows import dict_row

    from aegisctl.pooler import execute_with_settings, per_transaction

    if isinstance(vector, str):  # pgvector's text form, e.g. a stored embedding::text
        vector = query_vector(conn, [float(x) for x in vector.strip("[] ").split(",")])
    version = pgvector_version(conn)
    iterative = settings.search.iterative_scan if version >= (0, 8) else "off"
    ef_search = min(1000, max(settings.search.ef_search, limit))
    explain.ef_search = ef_search
    hits: list[Hit] = []
    for kind in kinds:
        where, params = filters.where(kind)
        if exclude and exclude[0] == kind:
            where = sql.SQL("{} AND id <> %(exclude_id)s").format(where)
            params["exclude_id"] = exclude[1]
        params.update(q=vector, k=limit)
        estimated = estimate_rows(conn, kind, where, params,
                                  filtered=filters.active or exclude is not None)
        exact = estimated <= settings.search.exact_below
        if exact:
            path = f"exact: estimated {estimated} matching rows <= search.exact_below"
            local: dict[str, str] = {}
        else:
            local = {"hnsw.ef_search": str(ef_search)}
            path = f"hnsw index, ef_search {ef_search}"
            if filters.active or exclude:
                if iterative != "off":
                    local["hnsw.iterative_scan"] = iterative
                    # Left alone, the planner often prefers "filter by B-tree, then sort every
                    # match" (exact but ~20x slower at 10k matches): the estimate said the
                    # matching set is large, so walk the graph.
                    local["enable_sort"] = "off"
                    path += f", iterative scan ({iterative})"
                    explain.iterative_scan = iterative
                else:
                    path += " (pgvector < 0.8: a selective filter may return fewer rows)"
            path += f"; estimated {estimated} matching rows"
        query = _semantic_query(conn, kind, where, dim, exact, query_text, highlight)
        if query_text is not None:
            params["text"] = query_text
        info_path = PathInfo(kind=kind, signal="semantic", path=path, estimated_rows=estimated)
        if list(local) == ["hnsw.ef_search"] and conn.autocommit and not with_plan \
                and not per_transaction(conn):
            # Unfiltered: ef_search is the only setting, so it is set for the session (once
            # per connection and value) and the query runs alone — one round trip, like the
            # bare ORDER BY ... LIMIT. Through a transaction pooler a session SET would
            # land on a shared server connection: there it goes with the query below.
            state = session_state(conn)
            if state.get("ef_search") != ef_search:
                conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
                state["ef_search"] = ef_search
            local = {}
        if local and not with_plan and conn.autocommit and per_transaction(conn):
            # Through a transaction pooler: the search's settings join the connection's own
            # in one set_config ahead of the query, in the query's implicit transaction (one
            # round trip, two statements; no BEGIN/COMMIT).
            with conn.cursor(row_factory=dict_row, binary=True) as cur:
                rows = execute_with_settings(cur, local, query, params).fetchall()
            local = {}
        elif not local and not with_plan:
            with conn.cursor(row_factory=dict_row, binary=True) as cur:
                rows = cur.execute(query, params).fetchall()
        if not local and not with_plan:
            info_path.rows = len(rows)
            explain.paths.append(info_path)
            hits.extend(_semantic_hit(kind, r, query_text) for r in rows)
            continue
        # Pipeline mode: BEGIN, the settings, the query and COMMIT travel together instead of
        # waiting for one another's answers.
        with conn.pipeline(), conn.transaction(), \
                conn.cursor(row_factory=dict_row, binary=True) as cur:
            if local:
                names = list(local)
                cur.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(
                    sql.SQL("set_config({}, {}, true)").format(sql.Literal(n),
                                                               sql.Literal(local[n]))
                    for n in names)))
            if with_plan:
                cur.execute(b"EXPLAIN " + query, params)
                info_path.plan = plan_lines(cur.fetchall())
            cur.execute(query, params)
            rows = cur.fetchall()
        if info_path.plan:
            used = any("Index Scan using" in line and "embedding" in line
                       for line in info_path.plan)
            info_path.path += ("; the plan scans the HNSW index" if used
                               else "; the plan does not use the HNSW index")
        info_path.rows = len(rows)
        explain.paths.append(info_path)
        hits.extend(_semantic_hit(kind, r, query_text) for r in rows)
    hits.sort(key=lambda h: -(h.similarity or 0.0))
    for rank, hit in enumerate(hits[:limit], start=1):
        hit.ranks["semantic"] = rank
    return hits[:limit]
