"""Physical backups off the machine: `backup physical upload`, and the remote parts of
`backup physical create|restore|drill`, `backup upload --pending`, `backup wal status` and
`backup list` (the core is aegisctl.backup.physical.offsite*)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import AppState, FormatOption, state
from aegisctl.cli.options import WaitLock
from aegisctl.errors import AegisError, ExitCode

if TYPE_CHECKING:
    from aegisctl.backup.physical.offsite import RemoteSummary
    from aegisctl.backup.physical.offsite_upload import ShipResult
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target

FromRemote = Annotated[bool, typer.Option(
    "--from-remote", help="From the remote store alone (backup.remote, decrypted with "
    "backup.encryption's key): no local Barman copy needed.")]
SystemId = Annotated[str | None, typer.Option(
    "--system-id", metavar="ID", help="With --from-remote: the database system whose backups "
    "to use, when the store holds several for the target.")]


@dataclass
class With:
    """A result plus another one beside it under `key` in the JSON (the table shows both)."""

    main: Any
    key: str
    extra: Any

    def to_json(self) -> Any:
        body = self.main.to_json()
        body[self.key] = self.extra.to_json() if hasattr(self.extra, "to_json") else self.extra
        return body

    def to_view(self) -> list[Block]:
        # A plain value (an error the caller already warned about) is for the JSON only.
        extra = self.extra.to_view() if hasattr(self.extra, "to_view") else []
        return list(self.main.to_view()) + list(extra)


def shipping_enabled(loaded: LoadedConfig, target: Target) -> bool:
    from aegisctl.backup.physical import hooks
    from aegisctl.backup.physical.offsite import remote_configured

    return remote_configured(loaded) and hooks.enabled(loaded, target)


def ship_now(loaded: LoadedConfig, target: Target, wait: float,
             progress: Any = None) -> ShipResult:
    """Every pending physical backup and WAL file; a configuration problem is a failure."""
    from aegisctl.backup.physical.offsite_upload import ShipResult, ship

    try:
        return ship(loaded, target, wait=wait, progress=progress)
    except AegisError as exc:
        result = ShipResult(target.name)
        result.failed["physical upload"] = exc.message
        result.exit_code = int(exc.exit_code)
        return result


def fail_on(result: ShipResult) -> None:
    for what, why in result.failed.items():
        output.print_status(f"aegisctl: error: upload of {what} failed: {why}")
    if not result.ok:
        raise typer.Exit(result.exit_code or int(ExitCode.FAILED))


def upload(
    ctx: typer.Context,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Send every pending physical backup and archived WAL file to the remote store
    (backup.remote), encrypted with backup.encryption's key, each object's size and SHA-256
    checked after upload. A killed upload resumes at its next volume. Exits 1 when anything
    failed (it stays pending), 2 for a configuration problem (no key, no bucket), 3 when the
    store cannot be reached.

    Examples:

      aegisctl backup physical upload

      aegisctl backup physical upload --format json
    """
    from aegisctl.backup.physical.offsite_upload import ship
    from aegisctl.locks import target_lock

    app_state = state(ctx)
    loaded, target = app_state.config(), app_state.target()
    with target_lock(loaded.settings, target.name, "backup physical upload", wait_lock):
        result = ship(loaded, target, wait=max(wait_lock, 60.0))
    output.render(result, app_state.fmt(fmt))
    fail_on(result)


def after_create(app_state: AppState, loaded: LoadedConfig, target: Target, created: Any,
                 fmt: FormatOption) -> None:
    """Render a new physical backup, uploading it (and pending WAL) first when a remote is
    configured; exit 1 when the upload failed (the backup stays pending)."""
    if not shipping_enabled(loaded, target):
        output.render(created, app_state.fmt(fmt))
        return
    shipped = ship_now(loaded, target, wait=60.0)
    output.render(With(created, "upload", shipped), app_state.fmt(fmt))
    fail_on(shipped)


def restore_from_remote(app_state: AppState, *, backup_id: str | None, to_time: str | None,
                        to_lsn: str | None, target_dir: Path, system_id: str | None,
                        dry_run: bool, fmt: FormatOption, wait_lock: float) -> None:
    from aegisctl.backup.physical.offsite_restore import plan_remote_restore, run_remote_restore
    from aegisctl.backup.physical.restore import parse_time
    from aegisctl.locks import target_lock

    loaded, target = app_state.config(), app_state.target()
    plan = plan_remote_restore(loaded, target, backup_id=backup_id,
                               to_time=parse_time(to_time) if to_time else None,
                               to_lsn=to_lsn, target_dir=target_dir, system_id=system_id)
    for line in plan.describe():
        output.print_status(line)
    if dry_run:
        output.print_status("dry run: nothing was restored")
        return
    with target_lock(loaded.settings, target.name, "backup restore --physical --from-remote",
                     wait_lock):
        result = run_remote_restore(loaded, target, plan)
    output.render(result, app_state.fmt(fmt))


def drill_from_remote(app_state: AppState, *, backup_id: str | None, to_time: str | None,
                      system_id: str | None, fmt: FormatOption, wait_lock: float) -> None:
    from aegisctl.backup.physical.offsite_restore import run_remote_drill
    from aegisctl.backup.physical.restore import parse_time
    from aegisctl.cli.progress import lines
    from aegisctl.locks import target_lock

    loaded, target = app_state.config(), app_state.target()
    show = lines(app_state)  # a long step starts: said on a terminal, not in a log
    if show is not None:
        show("drill: restoring from the remote store into a temporary directory")
    # A remote prune must not delete the chain the drill downloads.
    with target_lock(loaded.settings, target.name, "backup drill --physical --from-remote",
                     wait_lock):
        report = run_remote_drill(loaded, target, backup_id=backup_id,
                                  to_time=parse_time(to_time) if to_time else None,
                                  system_id=system_id)
    output.render(report, app_state.fmt(fmt))
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))


def remote_has_physical(app_state: AppState) -> bool:
    from aegisctl.backup.physical.offsite import remote_configured, remote_systems

    loaded, target = app_state.config(), app_state.target()
    try:
        return remote_configured(loaded) and bool(remote_systems(loaded, target))
    except AegisError:
        return False


def verify_remote(app_state: AppState, *, remote: bool, deep: bool, fmt: FormatOption,
                  wait_lock: float, logical: Any) -> None:
    """`backup verify --remote --physical`, or `--remote --all` (logical: a callable giving
    the logical result, None when no logical backup was ever uploaded)."""
    from aegisctl.backup.physical.offsite_check import verify_physical_remote
    from aegisctl.errors import UsageError
    from aegisctl.locks import target_lock

    if not remote:
        raise UsageError("--physical goes with --remote here (local physical backups are "
                         "verified when they are taken)")
    loaded, target = app_state.config(), app_state.target()
    logical_result = None
    if logical is not None:
        try:
            logical_result = logical()
        except UsageError:
            logical_result = None  # no logical backup was ever uploaded: physical only
    with target_lock(loaded.settings, target.name, "backup verify --remote --physical",
                     wait_lock):
        report = verify_physical_remote(loaded, target, deep=deep)
    shown = With(logical_result, "physical", report) if logical_result is not None else report
    output.render(shown, app_state.fmt(fmt))
    if not report.ok or (logical_result is not None and not logical_result.ok):
        raise typer.Exit(int(ExitCode.FAILED))


def remote_summary(loaded: LoadedConfig, target: Target) -> RemoteSummary | str | None:
    """The remote physical backups and window for `wal status` and `list`: None when no
    remote is configured for them, a one-line reason when the store could not be read."""
    from aegisctl.backup.physical.offsite import open_offsite, remote_configured, remote_systems
    from aegisctl.backup.physical.offsite import remote_summary as core_summary
    from aegisctl.backup.physical.offsite_restore import resolve_system

    if not remote_configured(loaded):
        return None
    try:
        if not remote_systems(loaded, target):
            return None
        offsite = open_offsite(loaded, target, resolve_system(loaded, target, None))
        return core_summary(offsite)
    except AegisError as exc:
        return exc.message


def with_remote(main: Any, loaded: LoadedConfig, target: Target) -> Any:
    summary = remote_summary(loaded, target)
    if summary is None:
        return main
    if isinstance(summary, str):
        output.warn(f"remote physical backups not listed: {summary}")
        return With(main, "remote", {"error": summary})
    return With(main, "remote", summary)


def remote_prune_plan(loaded: LoadedConfig, target: Target) -> Any:
    """The physical part of `backup prune --remote` (None when there is none)."""
    from aegisctl.backup.physical.offsite import remote_configured, remote_systems
    from aegisctl.backup.physical.offsite_check import remote_physical_prune

    if not remote_configured(loaded) or not remote_systems(loaded, target):
        return None
    return remote_physical_prune(loaded, target)


def apply_remote_prune(loaded: LoadedConfig, target: Target, wait_lock: float) -> Any:
    from aegisctl.backup.physical.offsite_check import apply_remote_physical_prune
    from aegisctl.locks import target_lock

    with target_lock(loaded.settings, target.name, "backup prune --remote", wait_lock):
        return apply_remote_physical_prune(loaded, target)


def register(physical_app: typer.Typer) -> None:
    physical_app.command("upload")(upload)
