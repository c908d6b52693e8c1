"""The diag topics by name, and running one: the catalog imports the topic modules (topics,
vectors), none of which imports it back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aegisctl.diagnostics.result import RECORDS, VIEWS, DiagResult
from aegisctl.diagnostics.topics import (
    DiagOptions,
    Runner,
    _activity,
    _cache,
    _indexes,
    _locks,
    _replication,
    _settings,
    _size,
    _slow,
    _vacuum,
)
from aegisctl.diagnostics.vectors import diagnose_vectors, explain_search
from aegisctl.errors import UsageError

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings


def _vectors(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
             options: DiagOptions) -> None:
    diagnose_vectors(conn, result, settings, options.recall_sample)


def _explain(conn: psycopg.Connection[Any], result: DiagResult, settings: Settings,
             options: DiagOptions) -> None:
    explain_search(conn, result, settings, options.table, options.column)


TOPICS: dict[str, tuple[str, Runner]] = {
    "activity": ("connections by state vs max_connections, long-running statements, idle in "
                 "transaction, waiting sessions", _activity),
    "locks": ("blocking chains: who blocks whom, for how long, running what", _locks),
    "size": ("database size, largest tables with table/index/TOAST split", _size),
    "cache": ("heap and index cache hit ratios", _cache),
    "indexes": ("index usage; unused, duplicate and invalid indexes with sizes", _indexes),
    "slow": ("top statements from pg_stat_statements by mean and total time", _slow),
    "vacuum": ("dead tuples, last (auto)vacuum/analyze, transaction-ID wraparound age", _vacuum),
    "replication": ("role, replicas with lag, WAL receiver, slots and retained WAL", _replication),
    "vectors": ("every vector/halfvec/sparsevec column: rows, missing/zero/duplicate embeddings, "
                "indexes, recall", _vectors),
    "explain-search": ("EXPLAIN (ANALYZE, BUFFERS) of a nearest-neighbour query: is the ANN "
                       "index used?", _explain),
    "settings": ("the settings that matter for this workload, with advice", _settings),
}


def run_topic(conn: psycopg.Connection[Any], topic: str, target: str, settings: Settings,
              options: DiagOptions | None = None) -> DiagResult:
    if topic not in TOPICS:
        raise UsageError(f"unknown diagnostic '{topic}' (topics: {', '.join(TOPICS)})")
    options = options or DiagOptions()
    if options.limit < 1:
        raise UsageError("--limit must be at least 1")
    started = time.perf_counter()
    row = conn.execute("SELECT current_database(), pg_is_in_recovery()").fetchone()
    assert row is not None
    result = DiagResult(topic=topic, target=target, database=row[0],
                        role="standby" if row[1] else "primary")
    TOPICS[topic][1](conn, result, settings, options)
    for section in result.sections:
        section.view_columns = section.view_columns or VIEWS.get((topic, section.name))
        section.records = section.records or RECORDS.get((topic, section.name))
    result.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    return result
