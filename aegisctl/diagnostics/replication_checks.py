"""`aegisctl check`: replication seen from either side.

A primary's walsenders are of two kinds. Standbys replay WAL: they are judged by replay lag
(`replication_lag`) and counted against the target's `expected_replicas` (`replica_count`).
WAL receivers (pg_receivewal, Barman's `receive-wal`, aegisctl's own physical backups) never
replay: their replay lag only grows, so they are judged by how far their flushed position is
behind the primary's WAL (`wal_receivers`). A walsender is a receiver when it reports no replay
position, or when it streams into the physical backups' slot (`backup.physical.slot_name`).
"""

from __future__ import annotations

from typing import Any

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    grade,
    register_check,
)
from aegisctl.diagnostics.result import format_seconds
from aegisctl.units import format_bytes


def walsenders(ctx: CheckContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(standbys, WAL receivers) connected to this primary."""
    if "walsenders" not in ctx.memo:
        rows = ctx.rows("""
            SELECT r.application_name, r.state,
                   coalesce(extract(epoch FROM r.replay_lag), 0)::float8,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), r.flush_lsn)::bigint,
                   r.replay_lsn IS NULL OR s.slot_name = %s
            FROM pg_stat_replication r
            LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid
            ORDER BY r.replay_lag DESC NULLS LAST""", (ctx.loaded.settings.backup.physical.slot_name,))
        senders = [{"name": name, "state": state, "replay_lag": lag, "flush_behind": behind,
                    "receiver": bool(receiver)} for name, state, lag, behind, receiver in rows]
        ctx.memo["walsenders"] = ([s for s in senders if not s["receiver"]],
                                  [s for s in senders if s["receiver"]])
    found: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ctx.memo["walsenders"]
    return found


def _expected_replicas(ctx: CheckContext) -> int | None:
    spec = ctx.loaded.settings.targets.get(ctx.target.name)
    return spec.expected_replicas if spec is not None else None


@register_check("replication_lag", "replay lag of a standby, or of the primary's standbys")
def replication_lag(ctx: CheckContext) -> CheckResult:
    t = ctx.settings.replication_lag_seconds
    if ctx.role == "standby":
        return _standby_lag(ctx)
    standbys, _receivers = walsenders(ctx)
    if not standbys:
        raise CheckSkipped("a primary with no standby connected (WAL receivers are judged by "
                           "wal_receivers; expected_replicas makes a missing standby CRITICAL)")
    first = standbys[0]
    lag = round(first["replay_lag"], 1)
    return grade("replication_lag", lag, t.warning, t.critical, unit="s", minimum=0,
                 message=f"{len(standbys)} standby(s); most behind: {first['name']} "
                         f"({first['state']}) {format_seconds(lag)}")


def _standby_lag(ctx: CheckContext) -> CheckResult:
    t = ctx.settings.replication_lag_seconds
    # With WAL waiting to be replayed and no transaction replayed since the standby started,
    # pg_last_xact_replay_timestamp() is NULL: replay has then been stuck at most since the
    # start, which is the lag reported (never 0: that hid a paused standby).
    streaming, lag, paused, pending = ctx.one("""
        SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'),
               CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                    ELSE extract(epoch FROM now() - coalesce(pg_last_xact_replay_timestamp(),
                                                             pg_postmaster_start_time())) END::float8,
               pg_is_wal_replay_paused(),
               coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint""")
    if not streaming:
        return CheckResult("replication_lag", Status.CRITICAL,
                           round(lag, 1) if lag is not None else None, t.warning, t.critical,
                           "s", "standby is not streaming from its primary (no WAL receiver)")
    message = f"replay is {format_seconds(round(lag or 0, 1))} behind the primary"
    if pending:
        message += f" ({format_bytes(pending)} received, not yet replayed)"
    result = grade("replication_lag", round(lag or 0, 1), t.warning, t.critical, unit="s",
                   minimum=0, message=message)
    if paused:
        result.message += "; replay is paused: SELECT pg_wal_replay_resume()"
        if pending and result.status is Status.OK:
            result.status = Status.WARNING  # WAL is waiting behind a pause: not "OK"
    return result


@register_check("replica_count", "streaming standbys of a primary against the target's "
                "expected_replicas")
def replica_count(ctx: CheckContext) -> CheckResult:
    expected = _expected_replicas(ctx)
    if expected is None:
        raise CheckSkipped(f"targets.{ctx.target.name}.expected_replicas is not set")
    if ctx.role == "standby":
        raise CheckSkipped("a standby (expected_replicas is judged on the primary)")
    standbys, _ = walsenders(ctx)
    streaming = [s for s in standbys if s["state"] == "streaming"]
    message = f"{len(streaming)} of {expected} expected standby(s) streaming"
    if len(streaming) < expected:
        others = [f"{s['name']} ({s['state']})" for s in standbys if s["state"] != "streaming"]
        message += (f"; not streaming: {', '.join(others)}" if others else
                    "; a standby has vanished: see `aegisctl diag replication`")
    return grade("replica_count", len(streaming), expected, expected, lower_is_worse=True,
                 minimum=0, message=message)


@register_check("wal_receivers", "WAL receivers (pg_receivewal, Barman) by their flushed "
                "position behind the primary")
def wal_receivers(ctx: CheckContext) -> CheckResult:
    if ctx.role == "standby":
        raise CheckSkipped("a standby (WAL receivers are judged on the primary)")
    _, receivers = walsenders(ctx)
    if not receivers:
        raise CheckSkipped("no WAL receiver connected")
    t = ctx.settings.wal_receiver_lag_bytes
    worst = max(receivers, key=lambda r: r["flush_behind"] or 0)
    behind = int(worst["flush_behind"] or 0)
    return grade("wal_receivers", behind, t.warning, t.critical, unit="B", minimum=0,
                 message=f"{len(receivers)} WAL receiver(s); most behind: {worst['name']} "
                         f"({worst['state']}) has flushed up to {format_bytes(behind)} "
                         "behind the primary")
