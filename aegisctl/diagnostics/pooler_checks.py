"""`aegisctl check`: PgBouncer's pools for the target, read from its admin console
(`targets.NAME.pgbouncer_admin_dsn`): clients waiting for a server connection, the longest
wait, and server connections in use against the pool size.

The admin console is not PostgreSQL: it answers only the simple query protocol and knows no
transactions, so it is read on an autocommit connection without prepared statements or
parameters. The pools judged are those of the database the target's `dsn` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    grade,
    register_check,
)


@dataclass
class PoolState:
    database: str
    clients_active: int = 0
    clients_waiting: int = 0
    servers_active: int = 0
    servers_idle: int = 0
    max_wait_s: float = 0.0
    pool_size: int | None = None
    avg_wait_s: float | None = None
    lists: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def _rows(conn: Any, command: str) -> list[dict[str, Any]]:
    cur = conn.execute(command)  # no parameters: the simple query protocol
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def read_pools(admin_dsn: str, database: str, connect_timeout: int) -> PoolState:
    """SHOW POOLS / DATABASES / STATS / LISTS, summed over the users of `database`."""
    import psycopg

    from aegisctl.db import _first_line

    state = PoolState(database)
    try:
        with psycopg.connect(admin_dsn, autocommit=True, prepare_threshold=None,
                             connect_timeout=connect_timeout,
                             application_name="aegisctl check") as conn:
            pools = [p for p in _rows(conn, "SHOW POOLS") if p["database"] == database]
            sizes = [d for d in _rows(conn, "SHOW DATABASES") if d["name"] == database]
            stats = [s for s in _rows(conn, "SHOW STATS") if s["database"] == database]
            state.lists = {str(r["list"]): int(r["items"]) for r in _rows(conn, "SHOW LISTS")}
    except psycopg.Error as exc:
        state.error = _first_line(exc)
        return state
    if not pools:
        state.error = f"PgBouncer has no pool for database '{database}' (yet)"
        return state
    for pool in pools:
        state.clients_active += int(pool["cl_active"])
        state.clients_waiting += int(pool["cl_waiting"])
        state.servers_active += int(pool["sv_active"])
        state.servers_idle += int(pool["sv_idle"]) + int(pool.get("sv_used") or 0)
        wait = int(pool["maxwait"]) + int(pool.get("maxwait_us") or 0) / 1e6
        state.max_wait_s = max(state.max_wait_s, wait)
    if sizes:
        # pool_size is per user: the pools of every user of the database together.
        state.pool_size = int(sizes[0]["pool_size"]) * len(pools)
    if stats:
        state.avg_wait_s = float(stats[0]["avg_wait_time"]) / 1e6
    return state


def _pools(ctx: CheckContext) -> PoolState:
    if "pgbouncer" not in ctx.memo:
        admin = ctx.target.pgbouncer_admin_dsn
        if not admin:
            raise CheckSkipped(f"no targets.{ctx.target.name}.pgbouncer_admin_dsn")
        from psycopg.conninfo import conninfo_to_dict

        database = str(conninfo_to_dict(ctx.target.dsn).get("dbname") or "")
        timeout = max(1, int(ctx.loaded.settings.connection.connect_timeout))
        ctx.memo["pgbouncer"] = read_pools(admin, database, timeout)
    state: PoolState = ctx.memo["pgbouncer"]
    return state


def _unknown(name: str, state: PoolState, ctx: CheckContext) -> CheckResult:
    from aegisctl.targets import redact_dsn

    where = redact_dsn(ctx.target.pgbouncer_admin_dsn or "")
    return CheckResult(name, Status.UNKNOWN, None, None, None, "",
                       f"cannot read PgBouncer's admin console ({where}): {state.error}")


@register_check("pooler_clients_waiting", "clients waiting for a PgBouncer server connection",
                needs_db=False)
def pooler_clients_waiting(ctx: CheckContext) -> CheckResult:
    state = _pools(ctx)
    if state.error:
        return _unknown("pooler_clients_waiting", state, ctx)
    t = ctx.settings.pooler_clients_waiting
    return grade("pooler_clients_waiting", state.clients_waiting, t.warning, t.critical,
                 minimum=0, message=f"{state.clients_waiting} client(s) waiting, "
                 f"{state.clients_active} active on pool '{state.database}'")


@register_check("pooler_max_wait", "the longest wait of a client for a PgBouncer server",
                needs_db=False)
def pooler_max_wait(ctx: CheckContext) -> CheckResult:
    state = _pools(ctx)
    if state.error:
        return _unknown("pooler_max_wait", state, ctx)
    t = ctx.settings.pooler_max_wait_seconds
    average = "" if state.avg_wait_s is None else \
        f" (average wait {state.avg_wait_s * 1000:.1f} ms over the last stats period)"
    return grade("pooler_max_wait", round(state.max_wait_s, 3), t.warning, t.critical, unit="s",
                 minimum=0, message=f"oldest waiting client has waited "
                 f"{state.max_wait_s:.3f}s{average}")


@register_check("pooler_server_connections",
                "PgBouncer server connections in use, % of the pool size", needs_db=False)
def pooler_server_connections(ctx: CheckContext) -> CheckResult:
    state = _pools(ctx)
    if state.error:
        return _unknown("pooler_server_connections", state, ctx)
    t = ctx.settings.pooler_server_used_pct
    used = state.servers_active
    lists = ", ".join(f"{k} {v}" for k, v in state.lists.items()
                      if k in ("used_clients", "used_servers", "free_servers", "login_clients"))
    if not state.pool_size:
        return CheckResult("pooler_server_connections", Status.OK, None, t.warning, t.critical,
                           "%", f"{used} server connection(s) in use (pool size unknown)")
    pct = round(100.0 * used / state.pool_size, 1)
    return grade("pooler_server_connections", pct, t.warning, t.critical, unit="%", minimum=0,
                 maximum=100, message=f"{used} of {state.pool_size} server connections in use "
                 f"({state.servers_idle} idle){f'; {lists}' if lists else ''}")
