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
from aegisctl.diagnostics.result import format_seconds


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
        if state and state.startswith("idle in transaction"):
            message += f"; end it: SELECT pg_terminate_backend({pid}); " \
                       "idle_in_transaction_session_timeout ends such sessions by itself"
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
    from aegisctl.diagnostics.hints import invalid_index_hint

    rows = ctx.rows("""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), i.indexrelid::bigint
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT (i.indisvalid AND i.indisready) AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1""")
    if not rows:
        return grade("invalid_indexes", 0, 0, None, minimum=0, message="no invalid index")
    # A unique index over duplicate keys gets no "rebuild it" advice: the rebuild would fail.
    shown = "; ".join(f"{name}: {invalid_index_hint(ctx.db, oid, name)}" for name, oid in rows[:3])
    message = f"{len(rows)} invalid: {shown}{' ...' if len(rows) > 3 else ''}"
    return grade("invalid_indexes", len(rows), 0, None, minimum=0, message=message)
