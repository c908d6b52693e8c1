"""HNSW under the filters an agent really searches with (`checks.vector_recall.filters`).

With a selective filter a plain HNSW scan finds its `ef_search` nearest candidates first and
filters them afterwards: under a 1 % tag most of them fail the filter, so the search returns
fewer rows than asked, or worse ones. pgvector 0.8's iterative scans (`hnsw.iterative_scan`)
keep walking the graph until enough rows pass, up to `hnsw.max_scan_tuples`.

A *case* is one filter shape on one HNSW index: its WHERE clause, a sample of stored vectors of
the whole table used as queries (agents ask about anything, then filter), and the exact top-10
of each under the same filter (index scans off). `run_case` then measures recall@10, the share
of queries answered with fewer rows than the exact search finds, and the latency, at one
setting of ef_search / iterative scan / max_scan_tuples. The check (vector_recall_filtered) and
`maint vector-index --tune` are both built on it.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.diagnostics.vectors import RECALL_K, operator_for, template

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from aegisctl.diagnostics.settings import FilterShape

MODES = ("off", "strict_order", "relaxed_order")
UNFILTERED = "(unfiltered)"
# The memory tables and the columns a shape's conditions use.
_TABLES = {"episodic": ("episodic_memory", "timestamp"), "semantic": ("semantic_memory",
                                                                      "created_at")}


@dataclass
class Case:
    shape: str
    kind: str | None
    index: dict[str, Any]  # a row of diag vectors' index inventory
    where: Any  # sql.Composable
    params: dict[str, Any]
    matching_rows: int = 0
    vectors: list[str] = field(default_factory=list)
    exact: list[set[str]] = field(default_factory=list)
    own_index_scans: int = 0
    own_seq_scans: int = 0
    plan_uses_index: bool | None = None

    @property
    def label(self) -> str:
        return f"{self.shape} on {self.index['table']}"


@dataclass
class Measure:
    """One case at one setting."""

    recall: float | None
    short_share: float | None  # queries answered with fewer rows than the exact search found
    latencies_ms: list[float]

    @property
    def p50_ms(self) -> float | None:
        return round(statistics.median(self.latencies_ms), 2) if self.latencies_ms else None

    @property
    def p95_ms(self) -> float | None:
        return p95(self.latencies_ms)


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2)


def shape_kinds(shape: FilterShape) -> list[str]:
    """The memory kinds a shape applies to (its conditions decide when `kind` is unset)."""
    if shape.kind:
        return [shape.kind]
    if shape.context or shape.event_type:
        return ["episodic"]
    if shape.category:
        return ["semantic"]
    return ["episodic", "semantic"]


def shape_where(shape: FilterShape, kind: str) -> tuple[Any, dict[str, Any]]:
    """(condition, params): every value bound, every column an identifier."""
    from psycopg import sql
    from psycopg.types.json import Jsonb

    parts: list[Any] = []
    params: dict[str, Any] = {}
    if shape.tag:
        parts.append(sql.SQL("{} @> ARRAY[%(f_tag)s]::text[]").format(sql.Identifier("tags")))
        params["f_tag"] = shape.tag
    if shape.context:
        parts.append(sql.SQL("{} @> %(f_context)s").format(sql.Identifier("context")))
        params["f_context"] = Jsonb(dict(shape.context))
    if shape.since:
        parts.append(sql.SQL("{} >= now() - make_interval(secs => %(f_since)s)").format(
            sql.Identifier(_TABLES[kind][1])))
        params["f_since"] = float(shape.since)
    if shape.event_type:
        parts.append(sql.SQL("{} = %(f_type)s").format(sql.Identifier("event_type")))
        params["f_type"] = shape.event_type
    if shape.category:
        parts.append(sql.SQL("{} = %(f_category)s").format(sql.Identifier("category")))
        params["f_category"] = shape.category
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE"), params


def _nearest(case: Case, schema: str) -> sql.Composed:
    from psycopg import sql

    index = case.index
    operator = sql.SQL("OPERATOR({}.{})").format(sql.Identifier(schema),
                                                 sql.SQL(operator_for(index["opclass"]) or "<=>"))
    return sql.SQL("SELECT ctid::text FROM {table} WHERE ({key}) IS NOT NULL AND {where} "
                   "ORDER BY ({key}) {op} %(q)s::{type} LIMIT {k}").format(
        table=sql.Identifier(index["schema"], index["table"]), key=sql.SQL(index["key"]),
        where=case.where, op=operator, type=sql.SQL(index["key_type"]),
        k=sql.Literal(RECALL_K))


def hnsw_indexes(indexes: list[dict[str, Any]], table: str | None = None
                 ) -> list[dict[str, Any]]:
    return [i for i in indexes if i["method"] == "hnsw" and i["valid"]
            and operator_for(i["opclass"]) is not None
            and (table is None or i["table"] == table or f"{i['schema']}.{i['table']}" == table)]


def build_cases(indexes: list[dict[str, Any]], shapes: list[FilterShape],
                unfiltered: bool = False) -> list[Case]:
    """One case per shape and HNSW index of each memory table the shape applies to (plus one
    unfiltered case per HNSW index when asked)."""
    from psycopg import sql

    cases = []
    for index in indexes:
        if unfiltered:
            cases.append(Case(UNFILTERED, None, index, sql.SQL("TRUE"), {}))
        for shape in shapes:
            for kind in shape_kinds(shape):
                if index["schema"] == "public" and index["table"] == _TABLES[kind][0]:
                    where, params = shape_where(shape, kind)
                    cases.append(Case(shape.name, kind, index, where, params))
    return cases


# This transaction's not-yet-reported scans of the index and sequential scans of its table:
# the measurements' own, kept apart from the application's (see vector_checks).
_OWN_SCANS = ("SELECT pg_stat_get_xact_numscans(%(index)s::regclass), "
              "pg_stat_get_xact_numscans(%(table)s::regclass)")


def _own(conn: psycopg.Connection[Any], case: Case) -> tuple[int, int]:
    from psycopg import sql

    names = {"index": sql.Identifier(case.index["schema"], case.index["index"]).as_string(conn),
             "table": sql.Identifier(case.index["schema"], case.index["table"]).as_string(conn)}
    row = conn.execute(_OWN_SCANS, names).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def prepare_case(conn: psycopg.Connection[Any], schema: str, case: Case, sample: int,
                 seed: float | None = None) -> None:
    """The query vectors (a sample of the whole table) and their exact answers under the
    filter; how many rows match it."""
    from psycopg import sql

    index = case.index
    table = sql.Identifier(index["schema"], index["table"])
    key = sql.SQL(index["key"])
    rng = random.Random(seed)
    with conn.transaction():
        before = _own(conn, case)
        conn.execute("SELECT setseed(%s), set_config('max_parallel_workers_per_gather', '0', "
                     "true)", (rng.random() * 2 - 1,))
        case.vectors = [r[0] for r in conn.execute(template("vectors", "recall_sample").format(
            key=key, table=table), (sample,)).fetchall()]
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE ({}) IS NOT NULL AND {}").format(
            table, key, case.where), case.params).fetchone()
        case.matching_rows = int(row[0]) if row else 0
        # Exact: no index scan at all (the filter may still use a bitmap of its own index).
        conn.execute("SELECT set_config('enable_indexscan', 'off', true), "
                     "set_config('enable_indexonlyscan', 'off', true)")
        query = _nearest(case, schema)
        case.exact = [{r[0] for r in conn.execute(query, {**case.params, "q": v},
                                                  prepare=False).fetchall()}
                      for v in case.vectors]
        after = _own(conn, case)
    case.own_index_scans += after[0] - before[0]
    case.own_seq_scans += after[1] - before[1]


def run_case(conn: psycopg.Connection[Any], schema: str, case: Case, ef_search: int,
             mode: str, max_scan_tuples: int | None = None, iterative: bool = True) -> Measure:
    """Every query vector through the HNSW index at these settings (the planner is kept on
    the index: no sort, no sequential or bitmap scan), against the exact answers. Never a
    prepared statement: its cached plan would outlive the settings it was made under.
    `iterative`: the server's pgvector has iterative scans (0.8+); set explicitly, so that a
    database default (ALTER DATABASE ... SET) never leaks into a measurement."""
    from psycopg import sql

    settings = {"hnsw.ef_search": str(ef_search), "enable_seqscan": "off",
                "enable_bitmapscan": "off", "enable_sort": "off",
                "max_parallel_workers_per_gather": "0"}
    if iterative:
        settings["hnsw.iterative_scan"] = mode
    if max_scan_tuples is not None:
        settings["hnsw.max_scan_tuples"] = str(max_scan_tuples)
    query = _nearest(case, schema)
    total = found = short = used = 0
    latencies = []
    with conn.transaction():
        before = _own(conn, case)
        conn.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, true)").format(sql.Literal(k), sql.Literal(v))
            for k, v in settings.items())))
        if case.plan_uses_index is None and case.vectors:
            plan = [r[0] for r in conn.execute(sql.SQL("EXPLAIN ") + query,
                                               {**case.params, "q": case.vectors[0]})]
            case.plan_uses_index = any(case.index["index"] in line for line in plan)
        for vector, truth in zip(case.vectors, case.exact, strict=True):
            started = time.perf_counter()
            got = {r[0] for r in conn.execute(query, {**case.params, "q": vector},
                                              prepare=False).fetchall()}
            latencies.append((time.perf_counter() - started) * 1000)
            if not truth:
                continue
            used += 1
            total += len(truth)
            found += len(got & truth)
            short += len(got) < len(truth)
        after = _own(conn, case)
    case.own_index_scans += after[0] - before[0]
    case.own_seq_scans += after[1] - before[1]
    if not used:
        return Measure(None, None, latencies)
    return Measure(round(found / total, 4), round(short / used, 4), latencies)


def database_hnsw_settings(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    """What a new session of this database gets (postgresql.conf, ALTER DATABASE/ROLE SET):
    what the agent's own searches run with unless it sets them itself."""
    from aegisctl.diagnostics.advice import load_vector_library

    load_vector_library(conn)
    row = conn.execute("SELECT current_setting('hnsw.ef_search', true), "
                       "current_setting('hnsw.iterative_scan', true), "
                       "current_setting('hnsw.max_scan_tuples', true)").fetchone()
    assert row is not None
    return {"ef_search": row[0], "iterative_scan": row[1], "max_scan_tuples": row[2]}
