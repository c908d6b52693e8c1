"""`diag vectors` and `diag explain-search`: pgvector columns and indexes of any database.

Every vector/halfvec/sparsevec column of every schema is covered, not only the Aegis tables.
Table, column and index names come from the catalog and reach SQL as identifiers; index key
expressions and type names are the server's own deparsed text (pg_get_indexdef, format_type).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.diagnostics import queries
from aegisctl.diagnostics.advice import vector_schema
from aegisctl.diagnostics.result import DiagResult, Section, describe_error, fetch
from aegisctl.errors import UsageError
from aegisctl.units import format_bytes

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings

# Reading every embedding costs its bytes (mostly TOAST): tables larger than this get their
# missing/zero/duplicate counts from a sample of about SAMPLE_ROWS rows.
EXACT_BYTES = 64 * 1024 * 1024
SAMPLE_ROWS = 5_000
ANN_METHODS = ("hnsw", "ivfflat")
RECALL_K = 10
_NORM = {"vector": "vector_norm", "halfvec": "l2_norm", "sparsevec": "l2_norm"}
_SEND = {"vector": "vector_send", "halfvec": "halfvec_send", "sparsevec": "sparsevec_send"}
_OPERATORS = {"l2": "<->", "cosine": "<=>", "ip": "<#>", "l1": "<+>", "hamming": "<~>",
              "jaccard": "<%>"}
_DEFAULTS = {"hnsw": {"m": "16", "ef_construction": "64"}, "ivfflat": {"lists": "100"}}


def operator_for(opclass: str | None) -> str | None:
    """The distance operator an operator class orders by: vector_cosine_ops -> <=>."""
    if not opclass or not opclass.endswith("_ops"):
        return None
    kind = opclass.removesuffix("_ops").rsplit("_", 1)[-1]
    return _OPERATORS.get(kind)


def index_options(method: str, options: list[str] | None) -> dict[str, str]:
    values = dict(_DEFAULTS.get(method, {}))
    for item in options or []:
        key, _, value = item.partition("=")
        values[key] = value
    return values


@dataclass
class VectorIndex:
    row: dict[str, Any]

    @property
    def ann(self) -> bool:
        return self.row["method"] in ANN_METHODS


def template(topic: str, name: str) -> Any:
    """A statement of a diagnostics SQL file whose {placeholders} are filled in with
    psycopg.sql objects (identifiers, or catalog-deparsed expressions)."""
    from psycopg import sql

    return sql.SQL(queries.query(topic, name).sql)


def _columns(conn: psycopg.Connection[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return fetch(conn, queries.query("vectors", "columns").sql), \
        fetch(conn, queries.query("vectors", "indexes").sql)


def _counts(conn: psycopg.Connection[Any], schema: str, column: dict[str, Any]) -> dict[str, Any]:
    """Rows, rows without an embedding, zero vectors and duplicates; sampled on big tables."""
    import psycopg
    from psycopg import sql

    table = sql.Identifier(column["schema"], column["table"])
    col = sql.Identifier(column["column"])
    sampled = column["table_bytes"] > EXACT_BYTES and column["rows_estimate"] > SAMPLE_ROWS
    source: sql.Composable = table
    if sampled:
        pct = min(100.0, 100.0 * SAMPLE_ROWS / max(1, column["rows_estimate"]))
        # Row-level sampling: the heap is scanned, only sampled embeddings are read (detoasted).
        source = sql.SQL("{} TABLESAMPLE BERNOULLI ({})").format(table, sql.Literal(round(pct, 4)))
    parts = {"col": col, "source": source, "norm": sql.Identifier(schema, _NORM[column["type"]]),
             "send": sql.Identifier(schema, _SEND[column["type"]])}
    counts: dict[str, Any] = {"sampled": sampled}
    try:
        row = conn.execute(template("vectors", "counts").format(**parts)).fetchone()
    except psycopg.Error as exc:
        counts["error"] = describe_error(exc)
        return counts
    assert row is not None
    rows, missing, zero, duplicates = row
    if sampled and rows == 0:
        counts.update(sample_rows=0, rows=column["rows_estimate"], missing=None, zero=None,
                      duplicates=None)
    elif sampled:
        # Missing and zero scale to the table; duplicates are those within the sample.
        scale = column["rows_estimate"] / max(1, rows)
        counts.update(sample_rows=rows, rows=column["rows_estimate"],
                      missing=round(missing * scale), zero=round(zero * scale),
                      duplicates=duplicates)
    else:
        counts.update(rows=rows, missing=missing, zero=zero, duplicates=duplicates)
    return counts


def measure_recall(conn: psycopg.Connection[Any], schema: str, index: dict[str, Any],
                   sample: int, ef_search: int, seed: int | None = None) -> dict[str, Any]:
    """Approximate (index) vs exact top-10 for `sample` stored vectors used as queries."""
    from psycopg import sql

    op = operator_for(index["opclass"])
    if op is None:
        return {"recall": None, "recall_note": f"unknown operator class {index['opclass']}"}
    table = sql.Identifier(index["schema"], index["table"])
    key = sql.SQL(index["key"])
    key_type = sql.SQL(index["key_type"])
    operator = sql.SQL("OPERATOR({}.{})").format(sql.Identifier(schema), sql.SQL(op))
    search = template("vectors", "nearest").format(
        table=table, key=key, op=operator, type=key_type, k=sql.Literal(RECALL_K))
    rng = random.Random(seed)
    total, found, used = 0, 0, 0
    scans = sql.SQL(_OWN_SCANS)
    names = (index["schema"], index["index"], index["schema"], index["table"])
    with conn.transaction():
        # Two round trips per index, everything else pipelined. HNSW at aegisctl's own
        # search.ef_search; IVFFlat at the server's ivfflat.probes. No parallel workers: they
        # would report scans this session cannot count as its own.
        with conn.pipeline():
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true), "
                         "set_config('max_parallel_workers_per_gather', '0', true), "
                         "setseed(%s)", (str(ef_search), rng.random() * 2 - 1))
            first = conn.cursor().execute(scans, names)
            sampled = conn.cursor().execute(template("vectors", "recall_sample").format(
                key=key, table=table), (sample,))
        before = first.fetchone()
        vectors = [r[0] for r in sampled.fetchall()]
        # All approximate searches, then all exact ones. Never prepared: psycopg prepares a
        # statement run 5 times, and the server may then reuse a plan made under the other
        # phase's settings (the exact scan answering for the index, or the reverse).
        with conn.pipeline():
            conn.execute("SELECT set_config('enable_seqscan', 'off', true), "
                         "set_config('enable_indexscan', 'on', true)")
            approx_cursors = [conn.cursor().execute(search, (v,), prepare=False)
                              for v in vectors]
            conn.execute("SELECT set_config('enable_seqscan', 'on', true), "
                         "set_config('enable_indexscan', 'off', true), "
                         "set_config('enable_bitmapscan', 'off', true)")
            exact_cursors = [conn.cursor().execute(search, (v,), prepare=False)
                             for v in vectors]
            last = conn.cursor().execute(scans, names)
        approx = [{row[0] for row in c.fetchall()} for c in approx_cursors]
        exact = [{row[0] for row in c.fetchall()} for c in exact_cursors]
        after = last.fetchone()
    assert before is not None and after is not None
    own = {"own_index_scans": int(after[0]) - int(before[0]),
           "own_seq_scans": int(after[1]) - int(before[1])}
    for got, truth in zip(approx, exact, strict=True):
        if truth:
            total += len(truth)
            found += len(got & truth)
            used += 1
    if not used:
        return {"recall": None, "recall_queries": 0, **own,
                "recall_note": "no stored vectors to query with"}
    return {"recall": round(found / total, 4), "recall_queries": used, **own}


# This session's not-yet-reported index scans of the index and sequential scans of its table
# (pg_stat_get_xact_*): the difference around the recall queries is what they added to the
# cumulative statistics, which `check` must not mistake for the application's use.
_OWN_SCANS = ("SELECT pg_stat_get_xact_numscans(format('%%I.%%I', %s::text, %s::text)::regclass), "
              "pg_stat_get_xact_numscans(format('%%I.%%I', %s::text, %s::text)::regclass)")


def maintenance_work_mem(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT setting::bigint * 1024 FROM pg_settings "
                       "WHERE name = 'maintenance_work_mem'").fetchone()
    return int(row[0]) if row else 0


def vector_inventory(conn: psycopg.Connection[Any], settings: Settings, recall_sample: int = 0,
                     counts: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(columns, indexes) with their findings; also used by `aegisctl check`."""
    schema = vector_schema(conn)
    if schema is None:
        return [], []
    columns, raw_indexes = _columns(conn)
    mwm = maintenance_work_mem(conn)
    indexes: list[dict[str, Any]] = []
    for raw in raw_indexes:
        params = index_options(raw["method"], raw["options"])
        row = {k: raw[k] for k in ("schema", "table", "column", "index", "method", "opclass",
                                   "key", "key_type", "expression", "valid", "scans", "size_bytes")}
        row["options"] = raw["options"]
        row.update({"m": params.get("m"), "ef_construction": params.get("ef_construction"),
                    "lists": params.get("lists")})
        row["exceeds_maintenance_work_mem"] = raw["size_bytes"] > mwm
        notes = []
        if not raw["valid"]:
            notes.append("invalid (a failed concurrent build): searches ignore it; "
                         "REINDEX INDEX CONCURRENTLY or drop and recreate it")
        if raw["method"] in ANN_METHODS and raw["scans"] == 0:
            notes.append("never scanned since the statistics reset")
        if row["exceeds_maintenance_work_mem"] and raw["method"] in ANN_METHODS:
            notes.append(f"larger than maintenance_work_mem ({format_bytes(mwm)}): a rebuild "
                         "will not fit in memory and be much slower")
        row["recall"] = None
        if recall_sample > 0 and raw["valid"] and raw["method"] in ANN_METHODS:
            row.update(measure_recall(conn, schema, raw, recall_sample,
                                      settings.search.ef_search))
            if row.get("recall_note"):
                notes.append(str(row.pop("recall_note")))
        row["note"] = "; ".join(notes) or None
        indexes.append(row)
    out_columns = []
    for column in columns:
        mine = [i for i in indexes if (i["schema"], i["table"], i["column"]) ==
                (column["schema"], column["table"], column["column"])]
        ann = [i for i in mine if i["method"] in ANN_METHODS]
        row = {k: column[k] for k in ("schema", "table", "column", "type", "dimensions")}
        if counts:
            found = _counts(conn, schema, column)
            row.update({"rows": found.get("rows"), "missing": found.get("missing"),
                        "zero": found.get("zero"), "duplicates": found.get("duplicates"),
                        "sampled": found["sampled"], "sample_rows": found.get("sample_rows")})
        else:
            row["rows"] = column["rows_estimate"]
        row.update({"dead_ratio": column["dead_ratio"], "table_seq_scans": column["table_seq_scans"],
                    "table_index_scans": column["table_index_scans"],
                    "indexes": [i["index"] for i in mine]})
        notes = []
        live = column["live_tuples"] or column["rows_estimate"]
        if not ann and live >= 10_000:
            notes.append("no HNSW or IVFFlat index: every similarity search scans the table")
        if ann and column["table_seq_scans"] > 0 and all(i["scans"] == 0 for i in ann):
            notes.append("the table is scanned sequentially but its vector index never: does "
                         "the query's operator match the index's operator class? ("
                         + ", ".join(f"{i['index']}: {i['opclass']} orders by "
                                     f"{operator_for(i['opclass'])}" for i in ann) + ")")
        if (column["dead_ratio"] or 0) > 0.2:
            notes.append("over 20% dead tuples: VACUUM it (HNSW keeps dead entries until vacuumed)")
        if counts and row.get("zero"):
            notes.append("zero vectors have no direction: cosine distance to them is undefined")
        if counts and found.get("error"):
            notes.append(str(found["error"]))
        row["note"] = "; ".join(notes) or None
        out_columns.append(row)
    return out_columns, indexes


def diagnose_vectors(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
                     recall_sample: int) -> None:
    if recall_sample < 0:
        raise UsageError("--recall-sample must be 0 or more")
    if vector_schema(conn) is None:
        result.notes.append(f"the vector extension is not installed in database {result.database}")
        return
    columns, indexes = vector_inventory(conn, settings, recall_sample)
    if recall_sample:
        from aegisctl.diagnostics.vector_scans import record_recall_scans

        record_recall_scans(conn, settings, result.target, columns, indexes)
        for index in indexes:
            index.pop("own_index_scans", None)
            index.pop("own_seq_scans", None)
    result.sections.append(Section(
        "columns", columns, empty="no vector, halfvec or sparsevec columns",
        view_columns=["schema", "table", "column", "type", "dimensions", "rows", "missing", "zero",
                      "duplicates", "dead_ratio", "table_seq_scans", "indexes", "note"]))
    view = ["schema", "table", "index", "method", "opclass", "key", "m", "ef_construction",
            "lists", "size_bytes", "valid", "scans", "note"]
    if recall_sample:
        view.insert(-1, "recall")
    result.sections.append(Section("indexes", indexes, empty="no indexes on vector columns",
                                   view_columns=view))
    from aegisctl.diagnostics.vector_cache import index_cache

    cache, cache_notes = index_cache(conn, indexes)
    result.sections.append(Section(
        "cache", cache, empty="no HNSW or IVFFlat index",
        view_columns=["schema", "table", "index", "size_bytes", "buffered_bytes",
                      "buffered_share", "shared_buffers_share", "consequence"]))
    result.notes += cache_notes
    if any(c.get("sampled") for c in columns):
        result.notes.append(f"tables over {EXACT_BYTES // 1024 // 1024} MB (sampled: yes): "
                            f"missing and zero counts are estimated from about {SAMPLE_ROWS} "
                            "sampled rows, duplicates are those within the sample")
    if recall_sample:
        result.notes.append(f"recall: approximate vs exact top-{RECALL_K} for up to "
                            f"{recall_sample} stored vectors per index, at hnsw.ef_search = "
                            f"{settings.search.ef_search} (search.ef_search)")


def _choose(columns: list[dict[str, Any]], table: str | None, column: str | None
            ) -> dict[str, Any]:
    if table:
        schema, _, name = table.rpartition(".")
        matches = [c for c in columns if c["table"] == name and (not schema or c["schema"] == schema)
                   and (column is None or c["column"] == column)]
        if not matches:
            known = ", ".join(f"{c['schema']}.{c['table']}.{c['column']}" for c in columns) or "none"
            raise UsageError(f"no vector column {table}{'.' + column if column else ''} "
                             f"(vector columns: {known})")
        return matches[0]
    if column:
        raise UsageError("--column needs --table")
    for c in columns:
        if (c["schema"], c["table"], c["column"]) == ("public", "episodic_memory", "embedding"):
            return c
    return columns[0]


_LONG_VECTOR = re.compile(r"'([\[{])([^'\]}]{80,})([\]}])'")


def shorten_vectors(line: str) -> str:
    """The query vector, inlined in the plan, cut to its first values and its length."""
    def cut(match: re.Match[str]) -> str:
        values = match.group(2).split(",")
        return f"'{match.group(1)}{','.join(values[:3])},… {len(values)} values{match.group(3)}'"

    return _LONG_VECTOR.sub(cut, line)


def _walk(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_walk(child))
    return nodes


def explain_search(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
                   table: str | None, column: str | None) -> None:
    from psycopg import sql

    schema = vector_schema(conn)
    if schema is None:
        result.notes.append(f"the vector extension is not installed in database {result.database}")
        return
    columns, indexes = _columns(conn)
    if not columns:
        result.notes.append(f"no vector columns in database {result.database}")
        return
    chosen = _choose(columns, table, column)
    ann = [i for i in indexes if (i["schema"], i["table"], i["column"]) ==
           (chosen["schema"], chosen["table"], chosen["column"])
           and i["method"] in ANN_METHODS and i["valid"]]
    index = ann[0] if ann else None
    ident = sql.Identifier(chosen["schema"], chosen["table"])
    key: sql.Composable
    key_type: sql.Composable
    if index is not None:
        key, key_type = sql.SQL(index["key"]), sql.SQL(index["key_type"])
        op = operator_for(index["opclass"]) or "<=>"
    else:
        key = sql.Identifier(chosen["column"])
        key_type = sql.Identifier(schema, chosen["type"])
        op = "<=>"
    row = conn.execute(template("explain-search", "sample_vector").format(
        key=key, table=ident)).fetchone()
    summary: dict[str, Any] = {"schema": chosen["schema"], "table": chosen["table"],
                               "column": chosen["column"], "operator": op,
                               "ann_index": index["index"] if index else None}
    if row is None:
        result.sections.append(Section("summary", [summary], fields=True))
        result.notes.append("the table has no stored embedding to search with")
        return
    operator = sql.SQL("OPERATOR({}.{})").format(sql.Identifier(schema), sql.SQL(op))
    query = template("explain-search", "search").format(
        table=ident, key=key, op=operator, type=key_type, limit=sql.Literal(settings.search.limit))
    with conn.transaction():
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(settings.search.ef_search),))
        plan_json = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + query,
                                 (row[0],)).fetchone()
        text = [r[0] for r in conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + query,
                                           (row[0],)).fetchall()]
    assert plan_json is not None
    document = plan_json[0] if not isinstance(plan_json[0], str) else json.loads(plan_json[0])
    top = document[0]
    nodes = _walk(top["Plan"])
    ann_names = {i["index"] for i in ann}
    used = [n.get("Index Name") for n in nodes if n.get("Index Name") in ann_names]
    summary.update({
        "index_used": used[0] if used else None,
        "used_ann_index": bool(used),
        "scan": next((n["Node Type"] for n in nodes if "Scan" in n["Node Type"]), None),
        "ef_search": settings.search.ef_search,
        "limit": settings.search.limit,
        "planning_ms": round(top.get("Planning Time", 0.0), 3),
        "execution_ms": round(top.get("Execution Time", 0.0), 3),
        "shared_hit_blocks": top["Plan"].get("Shared Hit Blocks"),
        "shared_read_blocks": top["Plan"].get("Shared Read Blocks"),
    })
    result.sections.append(Section("summary", [summary], fields=True))
    result.sections.append(Section("plan", [{"plan": shorten_vectors(line)} for line in text]))
    if not used:
        why = ("there is no valid HNSW/IVFFlat index on this column" if not ann else
               "the planner chose another plan: few rows (a scan is cheaper), a filter, or an "
               "operator that does not match the index's operator class")
        result.notes.append(f"the ANN index was NOT used: {why}")
