"""aegisctl jobs: run a scheduled job (with its lock and history), and read the history."""

from __future__ import annotations

import logging
import signal
from enum import StrEnum
from typing import Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import AppState, FormatOption, state
from aegisctl.cli.options import limit_option

app = typer.Typer(
    help="Run scheduled jobs by name and read their history.\n\n"
         "Example: aegisctl jobs history --failed",
    no_args_is_help=True,
)


class Trigger(StrEnum):
    manual = "manual"
    timer = "timer"
    cron = "cron"
    scheduler = "scheduler"


def unattended_logging(app_state: AppState) -> None:
    """Job events are the point of these commands: shown unless --quiet."""
    if not app_state.quiet:
        logging.getLogger("aegisctl.scheduling").setLevel(
            logging.DEBUG if app_state.debug else logging.INFO)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def child_globals(app_state: AppState) -> tuple[str, ...]:
    extra: list[str] = []
    if app_state.data_dir:
        extra += ["--data-dir", app_state.data_dir]
    if app_state.debug:
        extra.append("--debug")
    return tuple(extra)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@app.command("run")
def run_job(
    ctx: typer.Context,
    job_name: Annotated[str, typer.Argument(metavar="JOB", help="A job of the schedule.")],
    trigger: Annotated[Trigger, typer.Option("--trigger", help="What started it (recorded in "
                                             "the history).")] = Trigger.manual,
    fmt: FormatOption = None,
) -> None:
    """Run one scheduled job now: take its lock, record the run, run its command in a
    subprocess, record the outcome. This is what the systemd units and cron lines call.

    Exits with the command's own exit code (1 when it timed out); 4 when the job is already
    running for its target, or when another run held the target's lock for all of
    scheduler.lock_wait (the start is skipped and recorded as such, with the holder). SIGTERM
    or Ctrl-C interrupts the command (SIGINT to its process group) and records the run as
    interrupted.

    On a Patroni cluster target with patroni.local_url, the same timers run on every member:
    where this host's member is not the leader (or the cluster is paused, or a switchover is
    scheduled) the run is recorded as skipped with the reason and exits 0.

    Examples:

      aegisctl jobs run backup

      aegisctl --config /etc/aegisctl/config.yaml jobs run prune --trigger cron
    """
    from aegisctl.cli.command_tree import check_schedule_commands
    from aegisctl.scheduling.jobs import find_job
    from aegisctl.scheduling.runner import JobExecution, RunOptions

    app_state = state(ctx)
    unattended_logging(app_state)
    loaded = app_state.config()
    job = find_job(loaded.settings, job_name)
    check_schedule_commands(loaded.settings, str(loaded.path or "config"), only=job.name)
    options = RunOptions(trigger=trigger.value, log_format=app_state.log_format.value,
                         child_globals=child_globals(app_state))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run = JobExecution(loaded, job, options).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    output.render(run, app_state.fmt(fmt))
    if run.status == "skipped" and run.exit_code == 0:
        return  # a cluster member that does not lead: nothing failed
    if run.status in ("failed", "skipped") and run.exit_code and run.exit_code > 0:
        raise typer.Exit(run.exit_code)  # the command's own code: 3 unreachable, 4 locked...
    if run.status != "succeeded":
        raise typer.Exit(1)  # timed out, or killed by a signal


@app.command("history")
def history_(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Option("--job", help="Only this job.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only failed, interrupted, timed out "
                                         "or abandoned runs.")] = False,
    since: Annotated[str | None, typer.Option("--since", help="Only runs started within this "
                                              "long, e.g. 7d.")] = None,
    limit: Annotated[int, limit_option("At most this many runs, newest first.", max=100000)] = 50,
    fmt: FormatOption = None,
) -> None:
    """Show recorded job runs of the target, newest first: trigger, status, exit code,
    duration and error. Runs recorded in the local fallback file (database down) are included.

    Examples:

      aegisctl jobs history --job backup

      aegisctl jobs history --failed --since 7d --format json
    """
    from aegisctl.scheduling.history_view import read_history

    app_state = state(ctx)
    result = read_history(app_state.config(), app_state.target(),
                          lambda: app_state.connect("jobs history"),
                          job=job, failed=failed, since=since, limit=limit)
    output.render(result, app_state.fmt(fmt))


@app.command("status")
def status(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Say, for each scheduled job of the target, whether it still succeeds: CRITICAL when its
    last success is older than its interval plus grace, WARNING when its last run failed,
    UNKNOWN before its first run. (The same verdicts `aegisctl check` reports.)

    Exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, like a monitoring plugin.

    Examples:

      aegisctl jobs status

      aegisctl --target primary jobs status --format json
    """
    from aegisctl.errors import ConnectionFailed
    from aegisctl.scheduling.freshness import job_freshness, job_targets

    app_state = state(ctx)
    loaded = app_state.config()
    target = app_state.target()
    try:
        conn = app_state.connect("jobs status")
    except ConnectionFailed as exc:
        logging.getLogger("aegisctl").warning("%s", exc)
        conn = None
    try:
        report = job_freshness(loaded.settings, conn, target.name,
                               job_target=job_targets(loaded))
    finally:
        if conn is not None:
            conn.close()
    output.render(report, app_state.fmt(fmt))
    raise typer.Exit({"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[report.worst])
