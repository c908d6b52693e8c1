"""aegisctl systemd: render and install the units of the schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, OutputFormat, confirm, state
from aegisctl.cli.options import asks, dry_run_option, unless_dry_run, yes_option

app = typer.Typer(
    help="systemd timers for the schedule: one hardened oneshot service and one timer per "
         "job, rendered from the config.\n\nExample: aegisctl systemd install --dry-run",
    no_args_is_help=True,
)


WalStreamOption = Annotated[bool, typer.Option(
    "--wal-stream", help="Also aegisctl-wal-stream.service (Type=simple, Restart=always): the "
    "WAL streamer of physical backups (aegisctl backup wal stream).")]


def _units(ctx: typer.Context, wal_stream: bool = False):  # type: ignore[no-untyped-def]
    from aegisctl.backup.physical.units import wal_stream_unit
    from aegisctl.cli.command_tree import check_schedule_commands
    from aegisctl.scheduling.freshness import job_targets
    from aegisctl.scheduling.systemd import (
        UNIT_PREFIX,
        UnitFile,
        config_path,
        executable_path,
        render_units,
        unit_environment,
    )

    loaded = state(ctx).config()
    check_schedule_commands(loaded.settings, str(loaded.path or "config"))
    units = render_units(loaded.settings, loaded.path)
    if wal_stream:
        settings = loaded.settings
        units.append(UnitFile(f"{UNIT_PREFIX}wal-stream.service", wal_stream_unit(
            executable_path(settings), config_path(settings, loaded.path),
            user=settings.scheduler.systemd.user,
            environment_file=settings.scheduler.systemd.environment_file,
            environment=unit_environment(settings))))
    exe = executable_path(loaded.settings)
    if not Path(exe).is_file():
        output.warn(f"scheduler.systemd.executable {exe} does not exist here: "
                            "the units would fail to start (leave it unset for the aegisctl "
                            "running this command)")
    embedded = sorted(job for job, target in job_targets(loaded).items() if target == "embedded"
                      and loaded.settings.schedule[job].enabled)
    if embedded:
        output.warn(
            f"job(s) {', '.join(embedded)} run against the embedded server: a server "
            "a oneshot job starts is killed with the job's cgroup. Under systemd, configure a "
            "target whose server runs as its own service.")
    return loaded, units


@app.command()
def render(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--output", "-o", file_okay=False,
                                             help="Write the unit files into this folder "
                                                  "(default: print them).")] = None,
    wal_stream: WalStreamOption = False,
    fmt: FormatOption = None,
) -> None:
    """Render aegisctl-<job>.service and .timer for every enabled job of the schedule.

    The service runs `aegisctl jobs run JOB --trigger timer` as the dedicated user; the timer
    has the job's OnCalendar= (cron entries translated), Persistent=true and
    RandomizedDelaySec=. Files are written to a temporary name and renamed into place;
    aegisctl units in the folder that are no longer in the schedule are listed, not deleted.

    Examples:

      aegisctl systemd render

      aegisctl --config /etc/aegisctl/config.yaml systemd render --output ./units

      aegisctl systemd render --wal-stream --output ./units
    """
    from aegisctl.scheduling.systemd import UnitsResult, plan_units, write_units

    app_state = state(ctx)
    _, units = _units(ctx, wal_stream)
    if out is None:
        result = UnitsResult(units)
        if app_state.fmt(fmt) is OutputFormat.json:
            output.render(result, "json")
            return
        for unit in units:
            output.print_line(f"# ---- {unit.name}")
            output.print_line(unit.content)
        return
    result = plan_units(units, out)
    write_units(result)
    output.render(result, app_state.fmt(fmt))


@app.command()
@asks(unless_dry_run)
def install(
    ctx: typer.Context,
    unit_dir: Annotated[Path | None, typer.Option("--unit-dir", file_okay=False,
                                                  help="Where to write (default: "
                                                       "scheduler.systemd.unit_dir).")] = None,
    dry_run: Annotated[bool, dry_run_option("Say what would be written; "
                                          "write nothing.")] = False,
    yes: Annotated[bool, yes_option("Overwrite changed units without "
                                      "asking.")] = False,
    wal_stream: WalStreamOption = False,
    fmt: FormatOption = None,
) -> None:
    """Write the units into the systemd folder and print the commands that create the user and
    folders and enable the timers (aegisctl does not run systemctl itself).

    New units are written; a unit whose content differs from the rendered one is overwritten
    only after confirmation (--yes when not on a terminal); unchanged ones are left alone.

    Examples:

      aegisctl systemd install --dry-run

      sudo aegisctl --config /etc/aegisctl/config.yaml systemd install --yes
    """
    from aegisctl.scheduling.systemd import install_commands, plan_units, write_units

    app_state = state(ctx)
    loaded, units = _units(ctx, wal_stream)
    directory = unit_dir or Path(loaded.settings.scheduler.systemd.unit_dir)
    result = plan_units(units, directory)
    result.dry_run = dry_run
    result.commands = install_commands(loaded.settings, result)
    changed = [u.name for u in result.units if u.state == "changed"]
    if not dry_run:
        if changed:
            confirm(f"overwrite {len(changed)} changed unit(s) in {directory} "
                    f"({', '.join(changed)})?", yes)
        write_units(result)
    output.render(result, app_state.fmt(fmt))
