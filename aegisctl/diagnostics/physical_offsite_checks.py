"""`aegisctl check`: physical backups off the machine (when they go to backup.remote): how far
the remote WAL archive is behind the local one, in seconds and bytes (the RPO if the host dies
now), and physical backups still waiting for their upload. Thresholds:
`backup.physical.remote.max_wal_lag` / `max_wal_lag_bytes` (warning; twice as much critical)."""

from __future__ import annotations

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    grade,
    register_check,
)


@register_check("physical_offsite", "remote WAL lag (RPO) and physical backups pending upload",
                needs_db=False)
def physical_offsite(ctx: CheckContext) -> list[CheckResult]:
    from aegisctl.backup.physical import hooks
    from aegisctl.backup.physical.engine import engine_for
    from aegisctl.backup.physical.offsite import remote_configured
    from aegisctl.backup.physical.offsite_check import remote_wal_lag

    if not remote_configured(ctx.loaded):
        raise CheckSkipped("physical backups do not go to a remote store (backup.remote)")
    if not hooks.enabled(ctx.loaded, ctx.target):
        raise CheckSkipped("physical backups are not enabled for this target")
    lag = remote_wal_lag(ctx.loaded, engine_for(ctx.loaded, ctx.target))
    behind = (f"the remote WAL archive is {lag.lag_seconds:.0f} s and {lag.lag_bytes} bytes "
              f"({lag.pending_files} file(s)) behind the local one"
              if lag.pending_files else "the remote WAL archive is level with the local one")
    pending = CheckResult(
        "physical_upload_pending", Status.WARNING if lag.pending_backups else Status.OK,
        lag.pending_backups, 0, None, "",
        f"{lag.pending_backups} physical backup(s) not in the remote store yet "
        "(aegisctl backup upload --pending)" if lag.pending_backups
        else "every physical backup is in the remote store", minimum=0)
    return [
        grade("remote_wal_lag_seconds", round(lag.lag_seconds), lag.max_seconds,
              2 * lag.max_seconds, unit="s", message=behind, minimum=0),
        grade("remote_wal_lag_bytes", lag.lag_bytes, lag.max_bytes, 2 * lag.max_bytes,
              unit="B", message=behind, minimum=0),
        pending,
    ]
