"""aegisctl schedule: list the schedule and run it in the foreground (no systemd needed)."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, state

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig

app = typer.Typer(
    help="The schedule from the config: list it, or run it with the built-in scheduler.\n\n"
         "Example: aegisctl schedule list",
    no_args_is_help=True,
)


@app.command("list")
def list_(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("--next", min=1, max=50,
                                       help="How many next runs to show per job.")] = 1,
    fmt: FormatOption = None,
) -> None:
    """Show each job: its command, target, when it runs (with the systemd OnCalendar= it
    renders to) and its next run(s). Commands are checked against the installed aegisctl.

    Examples:

      aegisctl schedule list

      aegisctl schedule list --next 5 --format json
    """
    from aegisctl.cli.command_tree import check_schedule_commands
    from aegisctl.scheduling.scheduler import schedule_overview

    app_state = state(ctx)
    loaded = app_state.config()
    check_schedule_commands(loaded.settings, str(loaded.path or "config"))
    output.render(schedule_overview(loaded, count), app_state.fmt(fmt))


@app.command("run")
def run(
    ctx: typer.Context,
    only: Annotated[list[str] | None, typer.Option("--job", help="Run only these jobs "
                                                   "(repeatable).")] = None,
) -> None:
    """Run the schedule in the foreground, for containers and hosts without systemd.

    Each job runs as `aegisctl jobs run` would: its lock, its history, its command in a
    subprocess. A run missed while the scheduler was down is started on start-up when it is at
    most misfire_grace late. SIGTERM or Ctrl-C stops it cleanly: no new runs start, a running
    job gets scheduler.stop_timeout to finish, then it is interrupted and recorded so.
    SIGHUP re-reads the config: when it is valid its jobs replace the current ones (running
    jobs finish), else the current schedule stays and an error line says why.
    Logs one line per event on stderr (--log-format json for log shippers).

    Examples:

      aegisctl schedule run

      aegisctl --log-format json schedule run --job backup --job prune
    """
    from aegisctl.cli.command_tree import check_schedule_commands
    from aegisctl.cli.jobs_cmd import child_globals, unattended_logging
    from aegisctl.scheduling.runner import RunOptions
    from aegisctl.scheduling.scheduler import ForegroundScheduler

    app_state = state(ctx)
    unattended_logging(app_state)
    loaded = app_state.config()
    check_schedule_commands(loaded.settings, str(loaded.path or "config"))
    options = RunOptions(trigger="scheduler", log_format=app_state.log_format.value,
                         child_globals=child_globals(app_state))

    def reload() -> LoadedConfig:
        fresh = app_state.reload_config()
        check_schedule_commands(fresh.settings, str(fresh.path or "config"))
        return fresh

    scheduler = ForegroundScheduler(loaded, options, only=only or None, reload=reload)

    def stop(signum: int, frame: Any) -> None:
        scheduler.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: scheduler.request_reload())
    scheduler.run()
