"""aegisctl cleanup: retention policies from the config, applied in small batches."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, OutputFormat, confirm, state
from aegisctl.cli.options import WaitLock, asks, dry_run_option, unless_dry_run, yes_option
from aegisctl.cli.progress import lines as progress_lines
from aegisctl.errors import ExitCode

app = typer.Typer(
    help=(
        "Retention cleanup that never blocks the application: the policies in cleanup.policies "
        "delete expired rows in short batches (or drop whole expired partitions), optionally "
        "archiving them first, and report when the rows are gone from backups too.\n\n"
        "Example: aegisctl cleanup run --dry-run"
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def cleanup() -> None:
    """Retention cleanup (cleanup.policies in the config)."""


@app.command("run")
@asks(unless_dry_run)
def run_cmd(
    ctx: typer.Context,
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", metavar="NAME", help="Only this policy (repeatable). Default: every "
                                         "enabled policy.")] = None,
    dry_run: Annotated[bool, dry_run_option("Count what each policy would delete; delete nothing.")] = False,
    yes: Annotated[bool, yes_option("Do not ask for confirmation.")
                   ] = False,
    allow_emptying: Annotated[bool, typer.Option(
        "--allow-emptying", help="Let a policy delete every row of its table. Without it such "
        "a run is refused before anything is deleted (exit 2): a cutoff after the newest row "
        "is usually a wrong max_age or column.")] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Apply the retention policies in short batches (or by dropping expired partitions).

    Deletes rows older than each policy's max_age, except its exemptions, in short batches,
    each its own transaction with lock and statement timeouts; archives them first when the
    policy says so; reports when the rows are gone from backups too (the erasure horizon).

    SIGINT/SIGTERM stop after the current batch: committed batches stay deleted, and the
    next run continues. An archive that cannot be written (a full disk) stops the run before
    the batch is deleted. Archives not yet uploaded (when backup.remote is set) are uploaded
    at the end of every run. Exits 1 when a policy failed, 130 when interrupted.

    A policy that would delete every row of its table (no row newer than max_age, none
    exempt) is refused before anything is deleted, exit 2, unless --allow-emptying; the
    dry run warns about it.

    Examples:

      aegisctl cleanup run --dry-run

      aegisctl cleanup run --policy container_metrics --yes --format json

      aegisctl cleanup run --policy scratch_events --yes --allow-emptying
    """
    from aegisctl.cli.interrupt import graceful_stop
    from aegisctl.maintenance.joblock import job_lock
    from aegisctl.retention.emptying import refusal
    from aegisctl.retention.service import CleanupOptions, run_cleanup, select_policies

    app_state = state(ctx)
    loaded = app_state.config()
    target = app_state.target()
    names = select_policies(loaded, policy)
    as_json = app_state.fmt(fmt) is OutputFormat.json
    progress = progress_lines(app_state)
    lock = contextlib.nullcontext() if dry_run else job_lock(loaded, target, "cleanup run",
                                                             wait_lock)

    def side_connect() -> Any:  # polls pg_stat_progress_* during the rebuild and VACUUM
        return app_state.connect("cleanup run progress")

    from aegisctl.pooler import per_transaction

    # The batches may go through a transaction pooler; the rebuild, VACUUM and partition
    # detaches after them need a session: there they get a connection of their own (direct_dsn).
    with lock, app_state.connect("cleanup run", "maintenance", needs="any") as conn, \
            contextlib.ExitStack() as more:
        maint_conn = more.enter_context(app_state.connect("cleanup run", "maintenance")) \
            if per_transaction(conn) and not dry_run else None
        if not dry_run and names and not yes:
            # What will be touched, before asking (a cron job passes --yes and skips the count).
            preview = run_cleanup(loaded, target.name, conn,
                                  CleanupOptions(policies=names, dry_run=True))
            emptying = [p.emptying for p in preview.policies if p.emptying]
            if emptying and not allow_emptying:  # refused before asking, not after
                raise refusal(emptying)
            if not as_json:
                output.render(preview, "table")
            total = sum((p.expired_rows or 0) for p in preview.policies)
            confirm(f"Delete {total} expired row(s) from {len(preview.policies)} table(s) on "
                    f"'{target.name}'?", yes)
        with graceful_stop("batch") as stop:
            # Batches are never cancelled (a stop waits for the current one); the rebuild and
            # VACUUM after them are, since they can run long and lose nothing when cancelled.
            phase = ["delete"]
            stop.callbacks.append(lambda: (maint_conn or conn).cancel_safe()
                                  if phase[0] == "maintenance" else None)
            report = run_cleanup(loaded, target.name, conn,
                                 CleanupOptions(policies=names, dry_run=dry_run,
                                                allow_emptying=allow_emptying),
                                 should_stop=stop, progress=progress,
                                 side_connect=side_connect if progress else None,
                                 maint_conn=maint_conn,
                                 on_phase=lambda name: phase.__setitem__(0, name))
    output.render(report, app_state.fmt(fmt))
    if report.stopped or report.upload_error:  # one line on stderr too
        from aegisctl.errors import OperationFailed, RoleChanged

        if report.role_changed:  # the cluster's leader went away mid-run: exit 5
            raise RoleChanged(report.stopped or "")
        raise OperationFailed(report.stopped or report.upload_error or "")
    if report.interrupted:
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))
