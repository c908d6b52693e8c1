"""The database checks of `aegisctl check` (thresholds: the `checks:` section of the config).

Defaults are the seed's alerts (connections > 80 %, cache hit ratio < 95 %, statements slower
than 5 s, size > 80 % of the allocation, replication lag > 1 min) and, where the seed is silent,
pghero's and check_postgres's practical ones.
"""

from __future__ import annotations

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    grade,
    register_check,
)
from aegisctl.diagnostics.topics import PGSS_MISSING, format_seconds


def _who(pid: int | None, user: str | None, query: str | None) -> str:
    text = " ".join((query or "").split())
    if len(text) > 80:
        text = text[:77] + "..."
    return f"pid {pid} ({user}): {text}" if pid else ""


@register_check("role", "the server's role matches the target's configured role")
def role(ctx: CheckContext) -> CheckResult:
    expected = "standby" if ctx.target.role == "replica" else "primary"
    if ctx.role == expected:
        return CheckResult("role", Status.OK, None, None, None, "",
                           f"{ctx.role}, as configured ({ctx.target.role})")
    return CheckResult("role", Status.WARNING, None, None, None, "",
                       f"configured as {ctx.target.role} but the server is a {ctx.role} "
                       "(a failover or promotion?): update targets in the config")


@register_check("connections", "client connections as a percentage of max_connections")
def connections(ctx: CheckContext) -> CheckResult:
    used, limit = ctx.one("SELECT count(*) FILTER (WHERE backend_type = 'client backend'), "
                          "current_setting('max_connections')::int FROM pg_stat_activity")
    pct = round(100.0 * used / limit, 1)
    t = ctx.settings.connections_pct
    return grade("connections", pct, t.warning, t.critical, unit="%", minimum=0, maximum=100,
                 message=f"{used} of {limit} connections ({pct:g}%)")


@register_check("cache_hit_ratio", "heap blocks found in shared buffers (after warm-up)")
def cache_hit_ratio(ctx: CheckContext) -> CheckResult:
    hit, read = ctx.one("SELECT coalesce(sum(heap_blks_hit), 0)::bigint, "
                        "coalesce(sum(heap_blks_read), 0)::bigint FROM pg_statio_user_tables")
    t = ctx.settings.cache_hit_ratio
    total = hit + read
    ratio = round(hit / total, 4) if total else None
    if total < t.min_blocks:
        return CheckResult("cache_hit_ratio", Status.OK, ratio, t.warning, t.critical, "",
                           f"warming up: {total} heap blocks accessed since the statistics "
                           f"reset (judged from {t.min_blocks})", 0, 1)
    assert ratio is not None
    return grade("cache_hit_ratio", ratio, t.warning, t.critical, lower_is_worse=True,
                 minimum=0, maximum=1,
                 message=f"{ratio:.2%} of {total} heap block accesses from shared buffers")


@register_check("slow_queries", "the longest-running active statement")
def slow_queries(ctx: CheckContext) -> CheckResult:
    row = ctx.one("""
        SELECT coalesce(max(extract(epoch FROM now() - query_start)), 0)::float8,
               (array_agg(pid ORDER BY query_start))[1], (array_agg(usename ORDER BY query_start))[1],
               (array_agg(query ORDER BY query_start))[1], count(*)
        FROM pg_stat_activity
        WHERE state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend'
          AND NOT coalesce(application_name LIKE ANY(%s), false)""", (ctx.settings.ignore_applications,))
    seconds, pid, user, query, _count = row
    t = ctx.settings.slow_query_seconds
    seconds = round(seconds, 1)
    message = f"longest running statement {format_seconds(seconds)}"
    if pid and seconds > t.warning:
        message += f": {_who(pid, user, query)}"
    return grade("slow_queries", seconds, t.warning, t.critical, unit="s", minimum=0,
                 message=message)


@register_check("slow_statements", "the slowest mean execution time in pg_stat_statements")
def slow_statements(ctx: CheckContext) -> CheckResult:
    from psycopg import sql

    from aegisctl.diagnostics.topics import pgss_schema

    schema = pgss_schema(ctx.db)
    t = ctx.settings.slow_query_seconds
    if schema is None:
        database = ctx.one("SELECT current_database()")[0]
        return CheckResult("slow_statements", Status.UNKNOWN, None, t.warning, t.critical, "s",
                           PGSS_MISSING.format(db=database))
    row = ctx.db.execute(sql.SQL(
        "SELECT mean_exec_time / 1000, calls, query FROM {} "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "ORDER BY mean_exec_time DESC LIMIT 1").format(
            sql.Identifier(schema, "pg_stat_statements"))).fetchone()
    if row is None:
        return CheckResult("slow_statements", Status.OK, 0.0, t.warning, t.critical, "s",
                           "no statements recorded yet", 0)
    mean, calls, query = round(float(row[0]), 3), row[1], " ".join((row[2] or "").split())
    message = f"slowest mean {format_seconds(mean)} over {calls} call(s)"
    if mean > t.warning:
        message += f": {query[:77] + '...' if len(query) > 80 else query}"
    return grade("slow_statements", mean, t.warning, t.critical, unit="s", minimum=0,
                 message=message)


@register_check("long_transactions", "the oldest open transaction (active or idle in one)")
def long_transactions(ctx: CheckContext) -> CheckResult:
    row = ctx.one("""
        SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8,
               (array_agg(pid ORDER BY xact_start))[1], (array_agg(usename ORDER BY xact_start))[1],
               (array_agg(state ORDER BY xact_start))[1], (array_agg(query ORDER BY xact_start))[1]
        FROM pg_stat_activity
        WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()
          AND backend_type = 'client backend'
          AND NOT coalesce(application_name LIKE ANY(%s), false)""", (ctx.settings.ignore_applications,))
    seconds, pid, user, state, query = row
    t = ctx.settings.long_transaction_seconds
    seconds = round(seconds, 1)
    message = f"oldest transaction open {format_seconds(seconds)}"
    if pid and seconds > t.warning:
        message += f" ({state}) {_who(pid, user, query)}"
    return grade("long_transactions", seconds, t.warning, t.critical, unit="s", minimum=0,
                 message=message)


@register_check("lock_waits", "the longest wait for a lock held by another session")
def lock_waits(ctx: CheckContext) -> CheckResult:
    seconds, waiting, pid, blockers = ctx.one("""
        WITH w AS (
            SELECT a.pid, pg_blocking_pids(a.pid)::text AS blockers,
                   extract(epoch FROM now() - coalesce(
                       (SELECT min(l.waitstart) FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted),
                       a.state_change))::float8 AS seconds
            FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid()
              AND NOT coalesce(a.application_name LIKE ANY(%s), false))
        SELECT coalesce(max(seconds), 0), count(*), (array_agg(pid ORDER BY seconds DESC))[1],
               (array_agg(blockers ORDER BY seconds DESC))[1]
        FROM w""", (ctx.settings.ignore_applications,))
    t = ctx.settings.lock_wait_seconds
    seconds = round(seconds, 1)
    message = f"{waiting} session(s) waiting for a lock"
    if waiting:
        message += f"; pid {pid} waits {format_seconds(seconds)} for pid(s) " \
                   f"{(blockers or '{}').strip('{}')} (see `aegisctl diag locks`)"
    return grade("lock_waits", seconds, t.warning, t.critical, unit="s", minimum=0,
                 message=message)


@register_check("database_size", "database size as a percentage of the allocated storage")
def database_size(ctx: CheckContext) -> CheckResult:
    t = ctx.settings.database_size_pct
    if not t.allocated:
        raise CheckSkipped("checks.database_size_pct.allocated is not set")
    from aegisctl.units import format_bytes

    size = int(ctx.one("SELECT pg_database_size(current_database())")[0])
    pct = round(100.0 * size / t.allocated, 1)
    return grade("database_size", pct, t.warning, t.critical, unit="%", minimum=0, maximum=100,
                 message=f"{format_bytes(size)} of {format_bytes(t.allocated)} allocated ({pct:g}%)")


@register_check("replication_lag", "replay lag of a standby, or of the primary's replicas")
def replication_lag(ctx: CheckContext) -> CheckResult:
    t = ctx.settings.replication_lag_seconds
    if ctx.role == "standby":
        streaming, lag, paused = ctx.one("""
            SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'),
                   CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                        ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END::float8,
                   pg_is_wal_replay_paused()""")
        if not streaming:
            return CheckResult("replication_lag", Status.CRITICAL,
                               round(lag, 1) if lag is not None else None, t.warning, t.critical,
                               "s", "standby is not streaming from its primary (no WAL receiver)")
        message = f"replay is {format_seconds(round(lag or 0, 1))} behind the primary"
        if paused:
            message += " (replay is paused: SELECT pg_wal_replay_resume())"
        return grade("replication_lag", round(lag or 0, 1), t.warning, t.critical, unit="s",
                     minimum=0, message=message)
    rows = ctx.rows("""
        SELECT application_name, coalesce(extract(epoch FROM replay_lag), 0)::float8, state
        FROM pg_stat_replication ORDER BY replay_lag DESC NULLS LAST""")
    if not rows:
        raise CheckSkipped("a primary with no replica connected")
    name, lag, state = rows[0]
    return grade("replication_lag", round(lag, 1), t.warning, t.critical, unit="s", minimum=0,
                 message=f"{len(rows)} replica(s); most behind: {name} ({state}) "
                         f"{format_seconds(round(lag, 1))}")


@register_check("replication_slots", "WAL retained by inactive replication slots")
def replication_slots(ctx: CheckContext) -> CheckResult:
    from aegisctl.units import format_bytes

    rows = ctx.rows("""
        SELECT slot_name, active,
               coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                                             ELSE pg_current_wal_lsn() END, restart_lsn), 0)::bigint
        FROM pg_replication_slots ORDER BY 3 DESC""")
    if not rows:
        raise CheckSkipped("no replication slots")
    inactive = [r for r in rows if not r[1]]
    retained = max((r[2] for r in inactive), default=0)
    t = ctx.settings.slot_retained_wal
    message = f"{len(rows)} slot(s), {len(inactive)} inactive"
    if inactive:
        message += f"; {inactive[0][0]} holds {format_bytes(inactive[0][2])} of WAL"
    return grade("replication_slots", retained, t.warning, t.critical, unit="B", minimum=0,
                 message=message)


@register_check("wraparound", "transaction-ID age of the oldest database (wraparound at 2^31)")
def wraparound(ctx: CheckContext) -> CheckResult:
    name, age = ctx.one("SELECT datname, age(datfrozenxid) FROM pg_database "
                        "ORDER BY age(datfrozenxid) DESC LIMIT 1")
    t = ctx.settings.wraparound_age
    return grade("wraparound", int(age), t.warning, t.critical, minimum=0, maximum=2**31,
                 message=f"oldest: database {name} at {age:,} transactions "
                         f"({100 * age / 2**31:.1f}% of the way to wraparound)")


@register_check("invalid_indexes", "indexes left invalid by a failed concurrent build")
def invalid_indexes(ctx: CheckContext) -> CheckResult:
    rows = ctx.rows("""
        SELECT i.indexrelid::regclass::text FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT (i.indisvalid AND i.indisready) AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1""")
    names = [r[0] for r in rows]
    message = "no invalid index" if not names else \
        f"{len(names)} invalid: {', '.join(names[:5])}{'...' if len(names) > 5 else ''} " \
        "(REINDEX INDEX CONCURRENTLY, or drop and recreate)"
    return grade("invalid_indexes", len(names), 0, None, minimum=0, message=message)


def _vector_indexes(ctx: CheckContext) -> list[dict[str, object]]:
    if "vector_indexes" not in ctx.memo:
        from aegisctl.diagnostics.vectors import vector_inventory

        ctx.memo["vector_columns"], ctx.memo["vector_indexes"] = vector_inventory(
            ctx.db, ctx.loaded.settings, counts=False)
    indexes: list[dict[str, object]] = ctx.memo["vector_indexes"]
    return [i for i in indexes if i["method"] in ("hnsw", "ivfflat")]


@register_check("vector_indexes_invalid", "HNSW/IVFFlat indexes that are invalid")
def vector_indexes_invalid(ctx: CheckContext) -> CheckResult:
    indexes = _vector_indexes(ctx)
    if not indexes:
        raise CheckSkipped("no HNSW or IVFFlat index")
    bad = [str(i["index"]) for i in indexes if not i["valid"]]
    message = f"{len(indexes)} vector index(es), all valid" if not bad else \
        f"invalid: {', '.join(bad)}: searches on their columns scan the table"
    return grade("vector_indexes_invalid", len(bad), 0, None, minimum=0, message=message)


# An ANN index on a table this small is not expected to be used yet.
UNUSED_MIN_ROWS = 1000


@register_check("vector_indexes_unused", "HNSW/IVFFlat indexes never scanned while their table "
                "is scanned sequentially")
def vector_indexes_unused(ctx: CheckContext) -> CheckResult:
    indexes = _vector_indexes(ctx)
    if not indexes:
        raise CheckSkipped("no HNSW or IVFFlat index")
    columns = {(c["schema"], c["table"]): c for c in ctx.memo["vector_columns"]}
    unused = []
    for index in indexes:
        column = columns.get((index["schema"], index["table"]))
        if column and index["valid"] and index["scans"] == 0 and column["table_seq_scans"] \
                and (column["rows"] or 0) >= UNUSED_MIN_ROWS:
            unused.append(f"{index['schema']}.{index['index']}")
    message = "every vector index on a table of some size has been used" if not unused else \
        f"never used while the table is scanned: {', '.join(unused)} (operator vs operator " \
        "class? see `aegisctl diag vectors`)"
    return grade("vector_indexes_unused", len(unused), 0, None, minimum=0, message=message)


@register_check("vector_recall", "lowest recall@10 of the ANN indexes (sampled stored vectors)")
def vector_recall(ctx: CheckContext) -> CheckResult:
    from aegisctl.diagnostics.advice import vector_schema
    from aegisctl.diagnostics.vectors import RECALL_K, measure_recall

    t = ctx.settings.vector_recall
    if t.sample == 0:
        raise CheckSkipped("checks.vector_recall.sample is 0")
    indexes = [i for i in _vector_indexes(ctx) if i["valid"]]
    schema = vector_schema(ctx.db)
    measured = []
    too_big = []
    for index in indexes:
        column = next((c for c in ctx.memo["vector_columns"]
                       if (c["schema"], c["table"]) == (index["schema"], index["table"])), None)
        if column is None or (column["rows"] or 0) <= RECALL_K:
            continue
        if column["rows"] > t.max_rows:
            too_big.append(f"{index['schema']}.{index['index']}")
            continue
        assert schema is not None
        found = measure_recall(ctx.db, schema, index, t.sample, ctx.loaded.settings.search.ef_search)
        if found.get("recall") is not None:
            measured.append((found["recall"], f"{index['schema']}.{index['index']}"))
    unmeasured = f"; not measured (over checks.vector_recall.max_rows = {t.max_rows} rows): " \
        f"{', '.join(too_big)}" if too_big else ""
    if not measured:
        raise CheckSkipped(f"no valid ANN index on a table with {RECALL_K + 1} to {t.max_rows} "
                           f"rows{unmeasured}")
    recall, name = min(measured)
    return grade("vector_recall", recall, t.warning, t.critical, lower_is_worse=True,
                 minimum=0, maximum=1,
                 message=f"lowest recall@{RECALL_K}: {recall:.2f} on {name} ({len(measured)} "
                         f"index(es), {t.sample} queries each, ef_search "
                         f"{ctx.loaded.settings.search.ef_search}){unmeasured}")
