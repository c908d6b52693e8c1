"""aegisctl maint: vacuum, analyze, reindex, vector-index, partitions, status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import AppState, FormatOption, OutputFormat, confirm, state
from aegisctl.cli.options import WaitLock, asks, dry_run_option, yes_option
from aegisctl.cli.progress import lines as progress_lines
from aegisctl.errors import ExitCode

if TYPE_CHECKING:
    from aegisctl.maintenance.runner import MaintContext, MaintResult

app = typer.Typer(
    help=(
        "Database maintenance that never stalls the application: VACUUM, ANALYZE, REINDEX "
        "(concurrently), HNSW index rebuilds, and a status with recommendations. Every step "
        "that needs a strong lock waits at most maintenance.lock_timeout for it and retries.\n\n"
        "Example: aegisctl maint status"
    ),
    no_args_is_help=True,
    add_completion=False,
)

DryRun = Annotated[bool, dry_run_option("Print the statements; run nothing.")]
Tables = Annotated[list[str] | None, typer.Option(
    "--table", metavar="TABLE", help="A table (NAME or SCHEMA.NAME); repeatable. Default: all.")]


@contextlib.contextmanager
def _maint(app_state: AppState, command: str, dry_run: bool,
           wait_lock: float) -> Iterator[MaintContext]:
    from aegisctl.cli.interrupt import graceful_stop
    from aegisctl.maintenance.joblock import job_lock
    from aegisctl.maintenance.runner import MaintContext

    loaded = app_state.config()
    target = app_state.target()
    lock = contextlib.nullcontext() if dry_run else job_lock(loaded, target, f"maint {command}",
                                                             wait_lock)
    with lock, graceful_stop("step, cancelling the running statement") as stop, \
            app_state.connect(f"maint {command}", "maintenance") as conn:
        # A VACUUM FULL or an index build can run for an hour: the first SIGINT cancels it
        # (PostgreSQL rolls it back; a cancelled concurrent build's leftover is dropped by
        # the next `maint reindex`), and no further step starts.
        stop.callbacks.append(conn.cancel_safe)
        from aegisctl.maintenance.runner import ensure_primary

        if not dry_run:
            ensure_primary(conn, f"maint {command}")
        progress = progress_lines(app_state)

        def side_connect() -> Any:
            return app_state.connect(f"maint {command} progress")

        yield MaintContext(conn=conn, settings=loaded.settings.maintenance, dry_run=dry_run,
                           progress=progress, side_connect=side_connect, should_stop=stop)


def _finish(result: MaintResult, app_state: AppState, fmt: Any) -> None:
    output.render(result, app_state.fmt(fmt))
    if result.interrupted:
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if not result.ok:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("vacuum")
@asks(lambda p: bool(p.get("full")) and not p.get("dry_run"))
def vacuum_cmd(
    ctx: typer.Context,
    table: Tables = None,
    analyze: Annotated[bool, typer.Option("--analyze", help="Update statistics too.")] = False,
    full: Annotated[bool, typer.Option(
        "--full", help="Rewrite the tables to return space to the OS (locks each table "
                       "exclusively while it is rewritten; asks first).")] = False,
    dry_run: DryRun = False,
    yes: Annotated[bool, yes_option("Confirm VACUUM FULL.")] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """VACUUM the tables (all user tables by default), one at a time.

    Plain VACUUM never blocks reads or writes. --full rewrites each table under an ACCESS
    EXCLUSIVE lock: you are shown the tables and sizes and asked first (--yes to skip).

    Examples:

      aegisctl maint vacuum --analyze

      aegisctl maint vacuum --full --table container_metrics --dry-run
    """
    from aegisctl.maintenance.vacuum import FullVacuumPlan, resolve_tables, vacuum

    app_state = state(ctx)
    with _maint(app_state, "vacuum", dry_run, wait_lock) as mctx:
        tables = resolve_tables(mctx.conn, table)
        if full and not dry_run:
            if app_state.fmt(fmt) is not OutputFormat.json:
                output.render(FullVacuumPlan(tables), "table")
            confirm(f"VACUUM FULL {len(tables)} table(s), locking each while it is rewritten?",
                    yes)
        result = vacuum(mctx, tables, full=full, analyze=analyze)
    _finish(result, app_state, fmt)


@app.command("analyze")
def analyze_cmd(
    ctx: typer.Context,
    table: Tables = None,
    dry_run: DryRun = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Update the planner's statistics (ANALYZE), table by table.

    Examples:

      aegisctl maint analyze

      aegisctl maint analyze --table episodic_memory
    """
    from aegisctl.maintenance.vacuum import analyze, resolve_tables

    app_state = state(ctx)
    with _maint(app_state, "analyze", dry_run, wait_lock) as mctx:
        result = analyze(mctx, resolve_tables(mctx.conn, table))
    _finish(result, app_state, fmt)


@app.command("reindex")
def reindex_cmd(
    ctx: typer.Context,
    table: Tables = None,
    index: Annotated[str | None, typer.Option("--index", help="One index to rebuild.")] = None,
    all_tables: Annotated[bool, typer.Option("--all", help="Every user table.")] = False,
    concurrently: Annotated[bool, typer.Option(
        "--concurrently/--no-concurrently",
        help="Rebuild without blocking writes (the default where the server supports it).")
    ] = True,
    dry_run: DryRun = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Rebuild indexes, concurrently by default, and clean up invalid indexes.

    Invalid indexes a failed concurrent build left behind are dropped (leftovers named
    *_ccnew/*_ccold) or rebuilt; one that cannot be rebuilt is reported and the command
    exits 1.

    Examples:

      aegisctl maint reindex --all

      aegisctl maint reindex --index idx_episodic_embedding --dry-run
    """
    from aegisctl.errors import UsageError
    from aegisctl.maintenance.reindex import reindex, supports_concurrently

    chosen = sum([bool(table), index is not None, all_tables])
    if chosen != 1:
        raise UsageError("choose what to rebuild: --table T (repeatable), --index I or --all")
    app_state = state(ctx)
    with _maint(app_state, "reindex", dry_run, wait_lock) as mctx:
        use_concurrently = concurrently and supports_concurrently(mctx.conn)
        result = reindex(mctx, tables=table, index=index, all_tables=all_tables,
                         concurrently=use_concurrently)
    _finish(result, app_state, fmt)


@app.command("vector-index")
def vector_index_cmd(
    ctx: typer.Context,
    table: Annotated[str | None, typer.Option("--table", help="Only this table's HNSW "
                                              "indexes (default: every HNSW index).")] = None,
    index: Annotated[str | None, typer.Option("--index", help="One HNSW index.")] = None,
    m: Annotated[int | None, typer.Option("--m", help="HNSW m (links per node, 2..100; "
                                          "default: keep the index's).")] = None,
    ef_construction: Annotated[int | None, typer.Option(
        "--ef-construction", help="HNSW ef_construction (4..1000, >= 2*m; default: keep).")
    ] = None,
    maintenance_work_mem: Annotated[str | None, typer.Option(
        "--maintenance-work-mem", help="Memory for the build, e.g. 2GB (default: "
                                       "maintenance.maintenance_work_mem).")] = None,
    parallel_workers: Annotated[int | None, typer.Option(
        "--parallel-workers", min=0, help="max_parallel_maintenance_workers for the build.")
    ] = None,
    tune: Annotated[bool, typer.Option(
        "--tune", help="Instead of rebuilding: find the smallest hnsw.ef_search (and "
        "hnsw.iterative_scan) meeting --target-recall on the filter shapes of "
        "checks.vector_recall.filters and on unfiltered search, with each step's latency; "
        "applied with --yes (ALTER DATABASE ... SET).")] = False,
    target_recall: Annotated[float, typer.Option(
        "--target-recall", metavar="RATIO", help="--tune: the recall@10 every shape must "
        "reach.")] = 0.95,
    sample: Annotated[int | None, typer.Option(
        "--sample", metavar="N", min=1, help="--tune: stored vectors used as queries per "
        "shape (default: checks.vector_recall.sample, at least 10).")] = None,
    yes: Annotated[bool, yes_option("--tune: apply the chosen settings.")] = False,
    dry_run: DryRun = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Rebuild HNSW indexes concurrently with new parameters and report the build time; or,
    with --tune, tune the search settings for the filters the agent uses.

    A new index is built beside the old one (searches keep working), then replaces it.

    --tune measures recall@10 (against exact search under the same filter), the share of
    short results and the latency of each step of hnsw.ef_search, without and with
    iterative scans, and chooses the smallest ef_search meeting --target-recall. Without
    --yes (or with --dry-run) nothing changes; with --yes the choice becomes the database's
    default through ALTER DATABASE ... SET (the config file is not written).

    Examples:

      aegisctl maint vector-index --table episodic_memory --m 24 --ef-construction 128

      aegisctl maint vector-index --dry-run

      aegisctl maint vector-index --tune --target-recall 0.95

      aegisctl maint vector-index --tune --yes
    """
    from aegisctl.errors import UsageError
    from aegisctl.maintenance.vector import rebuild_vector_indexes
    from aegisctl.units import parse_size

    if tune:
        if m is not None or ef_construction is not None or maintenance_work_mem is not None \
                or parallel_workers is not None:
            raise UsageError("--tune changes search settings, not the index: leave out --m, "
                             "--ef-construction, --maintenance-work-mem and --parallel-workers")
        _tune(ctx, table, index, target_recall, sample, yes and not dry_run, dry_run,
              wait_lock, fmt)
        return
    if yes or sample is not None:
        raise UsageError("--yes and --sample go with --tune")

    memory = None
    if maintenance_work_mem is not None:
        try:
            memory = parse_size(maintenance_work_mem)
        except ValueError as exc:
            raise UsageError(f"--maintenance-work-mem: {exc}") from None
    app_state = state(ctx)
    with _maint(app_state, "vector-index", dry_run, wait_lock) as mctx:
        result = rebuild_vector_indexes(mctx, table=table, index=index, m=m,
                                        ef_construction=ef_construction,
                                        maintenance_work_mem=memory,
                                        parallel_workers=parallel_workers)
    _finish(result, app_state, fmt)


def _tune(ctx: typer.Context, table: str | None, index: str | None, target: float,
          sample: int | None, apply: bool, dry_run: bool, wait_lock: float, fmt: Any) -> None:
    from aegisctl.diagnostics.filtered_recall import hnsw_indexes
    from aegisctl.diagnostics.vectors import vector_inventory
    from aegisctl.errors import UsageError
    from aegisctl.maintenance.vector_tune import check_tune_arguments, tune_vector_search

    app_state = state(ctx)
    settings = app_state.config().settings
    recall = settings.checks.vector_recall
    check_tune_arguments(target, sample or max(10, recall.sample))
    with _maint(app_state, "vector-index --tune", not apply, wait_lock) as mctx:
        _, inventory = vector_inventory(mctx.conn, settings, counts=False)
        chosen = [i for i in hnsw_indexes(inventory, table)
                  if index is None or index in (i["index"], f"{i['schema']}.{i['index']}")]
        if not chosen:
            raise UsageError("no valid HNSW index " + (f"'{index}'" if index else "")
                             + (f" on table '{table}'" if table else ""))
        result = tune_vector_search(mctx.conn, chosen, recall.filters, target=target,
                                    sample=sample or max(10, recall.sample), apply=apply)
    if dry_run:
        result.notes.append("dry run: nothing was changed")
    output.render(result, app_state.fmt(fmt))
    if not result.ok:
        raise typer.Exit(int(ExitCode.FAILED))


def prewarm_hook(app_state: AppState, event: str, connect: Any = None) -> None:
    """After a server start, restore test or drill: prewarm when maintenance.prewarm.after
    says so, and say what it did on stderr (the command's own result stays on stdout)."""
    from aegisctl.maintenance.prewarm import prewarm_after

    prewarm = app_state.config().settings.maintenance.prewarm
    line = prewarm_after(event, list(prewarm.after), prewarm.tables,
                         connect or (lambda: app_state.connect("maint prewarm", "maintenance")))
    if line and not app_state.quiet:
        output.print_status(line)


@app.command("prewarm")
def prewarm_cmd(
    ctx: typer.Context,
    indexes_only: Annotated[bool, typer.Option(
        "--indexes-only", help="Load the vector indexes only, not their tables (default: "
        "maintenance.prewarm.tables).")] = False,
    dry_run: Annotated[bool, dry_run_option("List what would be loaded; load nothing.")] = False,
    fmt: FormatOption = None,
) -> None:
    """Load the vector indexes (HNSW, IVFFlat) and their tables into memory with pg_prewarm.

    After a restart, a restore or a drill the first semantic searches read the index from
    disk; this reads it in one pass instead. Indexes first, then tables and TOAST; what fits
    in shared_buffers goes there, the rest to the OS cache only. Runs on a standby too. Needs
    the pg_prewarm extension (aegisctl ext install pg_prewarm). Runs by itself after a server
    start, restore test or drill when maintenance.prewarm.after says so; schedule it like
    any command (e.g. `prewarm: {command: maint prewarm, at: "06:00"}`).

    Examples:

      aegisctl maint prewarm

      aegisctl maint prewarm --indexes-only --dry-run --format json
    """
    from aegisctl.maintenance.prewarm import prewarm_vectors

    app_state = state(ctx)
    settings = app_state.config().settings
    with app_state.connect("maint prewarm", "maintenance") as conn:
        result = prewarm_vectors(conn, tables=settings.maintenance.prewarm.tables
                                 and not indexes_only, dry_run=dry_run)
    output.render(result, app_state.fmt(fmt))
    if not result.ok:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("status")
def status_cmd(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """What each table needs: dead rows, last (auto)vacuum/analyze, bloat, a recommendation.

    Per table: live and dead rows, last (auto)vacuum and analyze, size, estimated bloat, and
    what to run next (and why). Read-only; takes no lock.

    Examples:

      aegisctl maint status

      aegisctl maint status --format json | jq '.tables[] | select(.reasons != [])'
    """
    from aegisctl.maintenance.status import table_status

    app_state = state(ctx)
    with app_state.connect("maint status") as conn:
        result = table_status(conn)
    output.render(result, app_state.fmt(fmt))


@app.command("partitions")
def partitions_cmd(
    ctx: typer.Context,
    table: Tables = None,
    lock_timeout: Annotated[float, typer.Option(
        "--lock-timeout", metavar="SECONDS", min=0.01, help="How long creating a partition may "
        "wait for its locks before it rolls back and retries.")] = 0.1,
    split_legacy: Annotated[bool, typer.Option(
        "--split-legacy", help="First move the rows of each table's legacy partition (left by "
        "`schema partition`) into monthly partitions, online: copied in batches, verified, "
        "swapped in one short transaction, the legacy partition dropped. Needs --yes.")] = False,
    batch_rows: Annotated[int, typer.Option(
        "--batch-rows", metavar="N", min=100, help="Rows copied per batch (each batch is its "
        "own short transaction) with --split-legacy.")] = 5000,
    yes: Annotated[bool, yes_option()] = False,
    dry_run: DryRun = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Keep monthly partitions created ahead and report every partitioned table.

    For each table in the `partitions:` section: rows in the DEFAULT partition (landed there
    because their month had no partition) are moved into a new partition for their month,
    then months are created up to partitions.<table>.premake beyond the current one. Every
    table partitioned by range on a date/time column is listed with its range, gaps, size,
    partitions ahead and DEFAULT rows. Creating a partition locks the parent for
    milliseconds, waiting at most --lock-timeout and retrying. Exits 1 when a table has a
    problem (rows that cannot be moved, a configured table not partitioned yet). Meant to
    run daily from the schedule (e.g. `partitions: {command: maint partitions, at: "01:00"}`).

    --split-legacy splits the legacy partition (the table as it was before `schema partition`)
    into one partition per month, so that retention drops its months one by one: its rows are
    copied in batches of --batch-rows while a trigger mirrors every change, verified, and
    swapped in; killed at any point, a re-run resumes or finishes.

    Examples:

      aegisctl maint partitions

      aegisctl maint partitions --dry-run --format json

      aegisctl maint partitions --split-legacy --table api_usage_events --yes
    """
    from aegisctl.maintenance.partitions import run_partitions
    from aegisctl.schema.partition_tx import LockPolicy

    app_state = state(ctx)
    loaded = app_state.config()
    if split_legacy and not dry_run:
        confirm("Copy each legacy partition's rows into monthly partitions, swap them in and "
                "drop the legacy partition once verified?", yes)
    with _maint(app_state, "partitions", dry_run, wait_lock) as mctx:
        policy = LockPolicy(lock_timeout=lock_timeout,
                            attempts=max(mctx.settings.lock_attempts, 20),
                            max_delay=mctx.settings.lock_max_delay, should_stop=mctx.should_stop)
        report = run_partitions(mctx.conn, loaded.settings.partitions, policy, dry_run=dry_run,
                                only=table, split_batch_rows=batch_rows if split_legacy
                                else None)
    output.render(report, app_state.fmt(fmt))
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))
