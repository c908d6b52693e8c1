"""aegisctl backup physical|wal|drill, and the --physical paths of backup create/restore.

`register(backup_app)` adds the `physical` and `wal` groups and the `drill` command to the
backup group; `create_physical` and `restore_physical` are called by `backup create --physical`
and `backup restore --physical`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aegisctl import output
from aegisctl.cli import offsite_cmd
from aegisctl.cli.context import AppState, FormatOption, confirm, state
from aegisctl.cli.options import WaitLock, asks, dry_run_option, unless_dry_run, yes_option
from aegisctl.errors import ExitCode
from aegisctl.locks import target_lock

if TYPE_CHECKING:
    from aegisctl.targets import Target

physical_app = typer.Typer(
    help=(
        "Physical backups through Barman: server settings, the WAL slot, Barman's "
        "configuration (written from backup.physical).\n\n"
        "Example: aegisctl backup physical enable"
    ),
    no_args_is_help=True,
    add_completion=False,
)

wal_app = typer.Typer(
    help=(
        "Continuous WAL streaming (the recoverable window of point-in-time recovery).\n\n"
        "Example: aegisctl backup wal status"
    ),
    no_args_is_help=True,
    add_completion=False,
)



def _announce(app_state: AppState, line: str) -> None:
    """A long step starts: said on a terminal (the progress helper's rule), not in a log."""
    from aegisctl.cli.progress import lines

    show = lines(app_state)
    if show is not None:
        show(line)

@physical_app.command("enable")
@asks(lambda p: bool(p.get("restart")))
def enable(
    ctx: typer.Context,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Restart the embedded server when a setting needs it (wal_level, "
        "max_wal_senders): every session is disconnected.")] = False,
    yes: Annotated[bool, yes_option("Do not ask before --restart disconnects every session.")
                   ] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Prepare the target for physical backups and point-in-time recovery: set wal_level,
    summarize_wal, max_wal_senders and a bounded max_slot_wal_keep_size (reloading where that
    is enough, saying when a restart is needed), create the replication slot with WAL
    reserved, install Barman in a private environment when missing, write its configuration
    from backup.physical, and run Barman's check. Exits 1 when something still blocks backups.

    Examples:

      aegisctl backup physical enable

      aegisctl backup physical enable --restart --yes --format json
    """
    from aegisctl.backup.physical.setup import enable_physical

    app_state = state(ctx)
    app_state.require_session("backup physical enable", "direct")  # ALTER SYSTEM, slots
    loaded, target = app_state.config(), _physical_target(app_state)
    if restart and target.embedded:  # other servers are refused by the core (exit 2)
        confirm(f"Restart the embedded server of '{target.name}' if a setting needs it? Every "
                "session is disconnected", yes)
    _announce(app_state, "enabling physical backups (installing Barman on first use)")
    with target_lock(loaded.settings, target.name, "backup physical enable", wait_lock):
        result = enable_physical(loaded, target, restart=restart)
    output.render(result, app_state.fmt(fmt))
    if not result.ok:
        output.print_status(f"aegisctl: error: {result.blocking()[0]}")
        raise typer.Exit(int(ExitCode.FAILED))


@physical_app.command("status")
def status(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Show whether physical backups are set up: settings still to change, the slot and how
    much WAL it holds, Barman's version and its check. Exits 1 when something blocks backups.

    Examples:

      aegisctl backup physical status

      aegisctl backup physical status --format json
    """
    from aegisctl.backup.physical.setup import physical_status

    app_state = state(ctx)
    result = physical_status(app_state.config(), _physical_target(app_state))
    output.render(result, app_state.fmt(fmt))
    if not result.ok:
        output.print_status(f"aegisctl: error: {result.blocking()[0]}")
        raise typer.Exit(int(ExitCode.FAILED))
    if not result.configured:
        raise typer.Exit(int(ExitCode.FAILED))


@physical_app.command("disable")
@asks(unless_dry_run)
def disable(
    ctx: typer.Context,
    dry_run: Annotated[bool, dry_run_option("Say what would change.")] = False,
    yes: Annotated[bool, yes_option("Do not ask.")] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Stop physical backups: drop the replication slot (the server stops keeping WAL for
    them) and remove Barman's server configuration. Backups and archived WAL are kept. Stop
    `backup wal stream` first.

    Examples:

      aegisctl backup physical disable --dry-run

      aegisctl backup physical disable --yes
    """
    from aegisctl.backup.physical.setup import disable_physical, plan_disable

    app_state = state(ctx)
    loaded, target = app_state.config(), _physical_target(app_state)
    app_state.require_session("backup physical disable", "direct")
    plan = plan_disable(loaded, target)
    if dry_run:
        output.render(plan, app_state.fmt(fmt))
        return
    for line in plan.describe():
        output.print_status(line)
    confirm(f"Disable physical backups of '{target.name}'?", yes)
    with target_lock(loaded.settings, target.name, "backup physical disable", wait_lock):
        result = disable_physical(loaded, target, plan)
    output.render(result, app_state.fmt(fmt))


@physical_app.command("list")
def list_(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """List physical backups (type, parent, chain, size, status, verified) and the
    recoverable window.

    Examples:

      aegisctl backup physical list

      aegisctl backup physical list --format json
    """
    from aegisctl.backup.physical.backups import physical_listing

    app_state = state(ctx)
    output.render(physical_listing(app_state.config(), _physical_target(app_state)),
                  app_state.fmt(fmt))


@wal_app.command("stream")
def stream(
    ctx: typer.Context,
    max_runtime: Annotated[float | None, typer.Option(
        "--max-runtime", metavar="SECONDS", min=1, help="Stop after this long (default: run "
        "until SIGTERM/Ctrl-C).")] = None,
    fmt: FormatOption = None,
) -> None:
    """Stream WAL continuously in the foreground (for systemd Type=simple or the scheduler):
    Barman's receive-wal over the replication slot, restarted with backoff when it dies, and
    completed segments moved into the archive every backup.physical.archive_interval. The slot
    keeps what a stopped streamer missed, so a restart resumes without a gap.

    Examples:

      aegisctl backup wal stream

      aegisctl backup wal stream --max-runtime 3600
    """
    from aegisctl.backup.physical.wal import stream_wal

    app_state = state(ctx)
    app_state.require_session("backup wal stream", "direct")  # a replication connection
    summary = stream_wal(app_state.config(), _physical_target(app_state),
                         on_event=output.print_status, max_runtime=max_runtime)
    output.render(summary, app_state.fmt(fmt))


@wal_app.command("status")
def wal_status(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Show WAL streaming: is it up, its lag, the WAL the slot holds back, the newest archived
    segment, and the recoverable window (from the oldest usable base backup to the newest
    archived WAL); with backup.remote, the remote backups and the window the store alone can
    restore (under "remote" in the JSON). Exits 1 when streaming is down, lagging or the slot
    holds too much.

    Examples:

      aegisctl backup wal status

      aegisctl backup wal status --format json
    """
    from aegisctl.backup.physical.wal import wal_status as core_status

    app_state = state(ctx)
    loaded, target = app_state.config(), _physical_target(app_state)
    result = core_status(loaded, target)
    output.render(offsite_cmd.with_remote(result, loaded, target), app_state.fmt(fmt))
    if not result.ok:
        raise typer.Exit(int(ExitCode.FAILED))


def _physical_target(app_state: AppState) -> Target:
    """The target. A cluster target works too: Barman and the WAL streamer follow its leader
    (aegisctl.backup.physical.ha)."""
    return app_state.target()


def drill(
    ctx: typer.Context,
    physical: Annotated[bool, typer.Option(
        "--physical", help="Drill a physical backup (required: logical backups are proven "
        "by `backup verify --restore-test`).")] = False,
    backup_id: Annotated[str | None, typer.Option(
        "--backup", metavar="ID", help="This backup (default: the newest usable one before "
        "--to-time).")] = None,
    to_time: Annotated[str | None, typer.Option(
        "--to-time", metavar="TS", help="Recover to this moment (ISO 8601; UTC when no "
        "offset).")] = None,
    from_remote: offsite_cmd.FromRemote = False,
    system_id: offsite_cmd.SystemId = None,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Prove a physical backup restores: recover it (to --to-time) into a temporary directory,
    start it on a free port as the server's user, wait for promotion, run pg_amcheck, compare
    extension versions (and row counts when recovering to the end), check every vector index is
    valid and used by a nearest-neighbour query, then stop and delete it. Exits 1 on any
    failure; a success is recorded for `check`.

    Examples:

      aegisctl backup drill --physical

      aegisctl backup drill --physical --to-time 2026-01-31T14:05:00Z --format json

      aegisctl backup drill --physical --from-remote
    """
    from aegisctl.backup.physical.restore import parse_time, run_drill
    from aegisctl.errors import UsageError

    if not physical:
        raise UsageError("backup drill needs --physical (logical backups: "
                         "aegisctl backup verify --latest --restore-test)")
    app_state = state(ctx)
    if from_remote:
        _physical_target(app_state)
        return offsite_cmd.drill_from_remote(app_state, backup_id=backup_id, to_time=to_time,
                                             system_id=system_id, fmt=fmt, wait_lock=wait_lock)
    app_state.require_session("backup drill", "direct")
    _announce(app_state, "drill: restoring into a temporary directory")
    loaded, target = app_state.config(), _physical_target(app_state)
    # A prune must not delete the backup the drill restores.
    with target_lock(loaded.settings, target.name, "backup drill --physical", wait_lock):
        report = run_drill(loaded, target, backup_id=backup_id,
                           to_time=parse_time(to_time) if to_time else None)
    output.render(report, app_state.fmt(fmt))
    from aegisctl.cli.maint_cmd import prewarm_hook

    prewarm_hook(app_state, "drill")
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))


def create_physical(ctx: typer.Context, *, incremental: bool, parent: str | None,
                    fmt: FormatOption, wait_lock: float = 0.0) -> None:
    """Body of `backup create --physical [--incremental [--parent ID]]`."""
    from aegisctl.backup.physical.backups import create_physical as core_create

    app_state = state(ctx)
    app_state.require_session("backup create --physical", "direct")  # replication
    loaded, target = app_state.config(), _physical_target(app_state)
    with target_lock(loaded.settings, target.name, "backup create --physical", wait_lock):
        result = core_create(loaded, target, incremental=incremental, parent=parent)
        if result.verify_problem:
            output.render(result, app_state.fmt(fmt))
            raise typer.Exit(int(ExitCode.FAILED))
        # With backup.remote: uploaded now (and the WAL archived so far); else pending.
        offsite_cmd.after_create(app_state, loaded, target, result, fmt)


def restore_physical(ctx: typer.Context, *, physical: bool, backup_id: str | None,
                     latest: bool,
                     to_time: str | None, to_lsn: str | None, target_dir: Path | None,
                     dry_run: bool, fmt: FormatOption, wait_lock: float = 0.0,
                     from_remote: bool = False, system_id: str | None = None) -> None:
    """Body of `backup restore --physical (ID | --latest) [--to-time | --to-lsn]
    --target-dir DIR [--from-remote]`. It never writes into a non-empty directory, so it
    needs no --yes."""
    from aegisctl.backup.physical.restore import parse_time, plan_restore, run_restore
    from aegisctl.errors import UsageError

    if not physical:
        raise UsageError("--target-dir, --to-time and --to-lsn restore physical backups: "
                         "add --physical")
    if target_dir is None:
        raise UsageError("--physical needs --target-dir DIR (a new or empty directory)")
    if not backup_id and not latest and not to_time and not to_lsn:
        raise UsageError("give a backup ID, --latest, or --to-time/--to-lsn")
    app_state = state(ctx)
    if from_remote:
        if backup_id and latest:
            raise UsageError("give a backup ID or --latest, not both")
        _physical_target(app_state)
        return offsite_cmd.restore_from_remote(
            app_state, backup_id=backup_id, to_time=to_time, to_lsn=to_lsn,
            target_dir=target_dir, system_id=system_id, dry_run=dry_run, fmt=fmt,
            wait_lock=wait_lock)
    loaded, target = app_state.config(), _physical_target(app_state)
    plan = plan_restore(loaded, target, backup_id=backup_id, latest=latest,
                        to_time=parse_time(to_time) if to_time else None, to_lsn=to_lsn,
                        target_dir=target_dir)
    for line in plan.describe():
        output.print_status(line)
    if dry_run:
        output.print_status("dry run: nothing was restored")
        return
    with target_lock(loaded.settings, target.name, "backup restore --physical", wait_lock):
        result = run_restore(loaded, target, plan)
    output.render(result, app_state.fmt(fmt))


def register(backup_app: typer.Typer) -> None:
    offsite_cmd.register(physical_app)
    backup_app.add_typer(physical_app, name="physical")
    backup_app.add_typer(wal_app, name="wal")
    backup_app.command("drill", hidden=True)(drill)  # alias of `backup physical drill`


@physical_app.command("prune")
@asks(unless_dry_run)
def prune(
    ctx: typer.Context,
    dry_run: Annotated[bool, dry_run_option("Show what would be deleted and "
                                          "why; delete nothing.")] = False,
    yes: Annotated[bool, yes_option("Do not ask.")] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Delete physical backups backup.retention no longer needs, by whole chains: a chain is
    kept while any member is needed, and so is the newest backup older than keep_days (the
    start of the recoverable window needs it). Deletions go to Barman's audit log.

    Examples:

      aegisctl backup physical prune --dry-run

      aegisctl backup physical prune --yes
    """
    from aegisctl.backup.physical.prune import prune_physical

    app_state = state(ctx)
    loaded, target = app_state.config(), _physical_target(app_state)
    plan = prune_physical(loaded, target, dry_run=True)
    if dry_run or not plan.delete:
        output.render(plan, app_state.fmt(fmt))
        return
    for backup_id, why in sorted(plan.delete.items()):
        output.print_status(f"delete {backup_id}: {why}")
    confirm(f"Delete {len(plan.delete)} physical backup(s)?", yes)
    with target_lock(loaded.settings, target.name, "backup physical prune", wait_lock):
        result = prune_physical(loaded, target, dry_run=False)
    output.render(result, app_state.fmt(fmt))


# The physical backups' own commands. `backup create|restore|drill --physical` stay as hidden
# aliases for one release.


@physical_app.command("create")
def create_cmd(
    ctx: typer.Context,
    incremental: Annotated[bool, typer.Option("--incremental", help="Only what changed since "
                                              "--parent.")] = False,
    parent: Annotated[str | None, typer.Option("--parent", metavar="ID", help="Parent of an "
                                               "incremental (default: the newest).")] = None,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Take a physical (base) backup through Barman, full or incremental, and verify it.

    Examples:

      aegisctl backup physical create

      aegisctl backup physical create --incremental --format json
    """
    create_physical(ctx, incremental=incremental, parent=parent, fmt=fmt, wait_lock=wait_lock)


@physical_app.command("restore")
def restore_cmd(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest backup.")] = False,
    to_time: Annotated[str | None, typer.Option("--to-time", metavar="TS", help="Recover to "
                                                "this moment (ISO 8601).")] = None,
    to_lsn: Annotated[str | None, typer.Option("--to-lsn", metavar="LSN", help="Recover to "
                                               "this LSN.")] = None,
    target_dir: Annotated[Path | None, typer.Option("--target-dir", file_okay=False,
                                                    help="Where to restore (a new or empty "
                                                         "folder).")] = None,
    dry_run: Annotated[bool, dry_run_option("Show the plan; restore nothing.")] = False,
    from_remote: offsite_cmd.FromRemote = False,
    system_id: offsite_cmd.SystemId = None,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Restore a physical backup (to a moment or LSN) into a new or empty folder; with
    --from-remote, from the remote store alone (only the config and the key are needed).

    Examples:

      aegisctl backup physical restore --latest --target-dir /srv/restored

      aegisctl backup physical restore --to-time 2026-01-31T14:05:00Z --target-dir /srv/pitr

      aegisctl backup physical restore --from-remote --latest --target-dir /srv/restored
    """
    restore_physical(ctx, physical=True, backup_id=backup_id, latest=latest, to_time=to_time,
                     to_lsn=to_lsn, target_dir=target_dir, dry_run=dry_run, fmt=fmt,
                     wait_lock=wait_lock, from_remote=from_remote, system_id=system_id)


@physical_app.command("drill")
def drill_cmd(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Option(
        "--backup", metavar="ID", help="This backup (default: the newest usable one before "
        "--to-time).")] = None,
    to_time: Annotated[str | None, typer.Option(
        "--to-time", metavar="TS", help="Recover to this moment (ISO 8601; UTC when no "
        "offset).")] = None,
    from_remote: offsite_cmd.FromRemote = False,
    system_id: offsite_cmd.SystemId = None,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Prove a physical backup restores: recover it into a temporary directory, start it,
    check it (pg_amcheck, extensions, row counts, vector indexes), then delete it. With
    --from-remote: from the remote store alone.

    Examples:

      aegisctl backup physical drill

      aegisctl backup physical drill --to-time 2026-01-31T14:05:00Z --format json

      aegisctl backup physical drill --from-remote
    """
    drill(ctx, physical=True, backup_id=backup_id, to_time=to_time, from_remote=from_remote,
          system_id=system_id, wait_lock=wait_lock, fmt=fmt)
