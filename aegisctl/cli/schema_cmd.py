"""aegisctl schema: init, status, migrate, verify, partition."""

from __future__ import annotations

import contextlib
from enum import StrEnum
from typing import Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, OutputFormat, confirm, state
from aegisctl.cli.options import WaitLock, asks, dry_run_option, unless_dry_run, yes_option

app = typer.Typer(
    help=(
        "Create and evolve the Aegis schema: versioned migrations from sql/migrations, the "
        "embedding dimension, and a check of the live database against them.\n\n"
        "Example: aegisctl schema init --embedding-dim 1536"
    ),
    no_args_is_help=True,
    add_completion=False,
)

WaitLockOption = Annotated[
    float | None,
    typer.Option("--wait-lock", metavar="SECONDS", min=0,
                 help="Wait this long for another run's migration lock, then exit 4 "
                 "(default: schema.lock_wait, 60s)."),
]


def _run_migration(ctx: typer.Context, fmt: OutputFormat, action: Any) -> Any:
    """Run action(); on a failed migration, the JSON report goes to stdout before the error."""
    from aegisctl.schema import MigrationFailed

    try:
        return action()
    except MigrationFailed as exc:
        if fmt is OutputFormat.json:
            output.emit_json({"error": exc.to_json()})
        else:
            output.print_status(f"failed statement ({exc.migration.filename}, line "
                                f"{exc.line}):\n{exc.statement.text if exc.statement else '-'}")
        raise


@app.command()
def init(
    ctx: typer.Context,
    embedding_dim: Annotated[
        int | None,
        typer.Option("--embedding-dim", metavar="N", help="Embedding dimension of the vector "
                     "columns (default: schema.embedding_dim, else the database's, else 1536). "
                     "Fixed once chosen."),
    ] = None,
    wait_lock: WaitLockOption = None,
    fmt: FormatOption = None,
) -> None:
    """Install the configured extensions and apply every pending migration: the first command
    to run on a new database. Running it again changes nothing and exits 0.

    Dimensions above 2000 are indexed as halfvec (pgvector's HNSW limit for vector).

    Examples:

      aegisctl schema init

      aegisctl schema init --embedding-dim 3072
    """
    from aegisctl.schema import init_schema

    app_state = state(ctx)
    settings = app_state.config().settings
    out = app_state.fmt(fmt)
    with app_state.connect("schema init", "ddl", needs="session") as conn:
        result = _run_migration(ctx, out, lambda: init_schema(
            conn, settings.schema, embedding_dim=embedding_dim, wait_lock=wait_lock))
        _partition_new_tables(conn, settings.partitions)
    output.render(result, out)


def _partition_new_tables(conn: Any, specs: dict[str, Any]) -> None:
    """Configured `partitions:` tables the migrations just created (empty) become partitioned
    from the start."""
    from aegisctl.errors import AegisError
    from aegisctl.schema.partition import partition_new_table

    for entry, spec in specs.items():
        name = f"{spec.schema}.{spec.table_name(entry)}"
        exists = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
        if not exists or exists[0] is None:
            continue
        try:
            done = partition_new_table(conn, name, spec.column, premake=spec.premake,
                                       default_partition=spec.default_partition)
        except AegisError as exc:
            output.print_status(f"{name}: not partitioned: {exc}")
            continue
        if done is not None:
            output.print_status(f"{name}: partitioned by month on {spec.column} "
                                f"({len(done.partitions)} months ahead)")


@app.command()
def migrate(
    ctx: typer.Context,
    to: Annotated[int | None, typer.Option("--to", metavar="VERSION",
                                           help="Stop after this version (never goes down).")
                  ] = None,
    dry_run: Annotated[bool, dry_run_option("List what would be applied; "
                                          "change nothing.")] = False,
    wait_lock: WaitLockOption = None,
    backup: Annotated[bool, typer.Option(
        "--backup", help="First take a backup and verify it (aegisctl backup create); no "
        "migration without it.")] = False,
    fmt: FormatOption = None,
) -> None:
    """Apply pending migrations in order, each in its own transaction. A failed migration is
    rolled back and reported with its file, statement and the server's error; a released
    migration whose file changed is refused. Concurrent runs are serialised by a lock: the
    second waits up to --wait-lock seconds, then exits 4.

    Examples:

      aegisctl schema migrate --dry-run

      aegisctl schema migrate --to 3 --wait-lock 120

      aegisctl schema migrate --backup
    """
    from aegisctl.schema import migrate as run_migrate
    from aegisctl.schema import schema_status

    app_state = state(ctx)
    settings = app_state.config().settings
    app_state.require_session("schema migrate")  # the migrations' advisory lock
    if backup and not dry_run:
        with app_state.connect("schema migrate") as conn:
            pending = schema_status(conn).having("pending")
        if not pending:
            output.print_status("no pending migrations: no backup needed")
    if backup and not dry_run and pending:
        from aegisctl.backup.service import create_verified_backup

        taken = create_verified_backup(app_state.config(), app_state.target(),
                                       label="before-migration")
        output.print_status(f"verified backup {taken.id} taken before migrating")
    out = app_state.fmt(fmt)
    with app_state.connect("schema migrate", "ddl", needs="session") as conn:
        result = _run_migration(ctx, out, lambda: run_migrate(
            conn, settings.schema, to=to, dry_run=dry_run, wait_lock=wait_lock))
    output.render(result, out)


@app.command()
def status(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Show every migration: applied (when, how long, by whom), pending, changed since it was
    applied, or missing (applied, file gone); and the database's embedding dimension.

    Examples:

      aegisctl schema status

      aegisctl schema status --format json
    """
    from aegisctl.schema import schema_status

    app_state = state(ctx)
    with app_state.connect("schema status") as conn:
        result = schema_status(conn)
    output.render(result, app_state.fmt(fmt))


@app.command()
def verify(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Check the live database against what its applied migrations should have produced:
    tables, columns, indexes, constraints, triggers, enum types, extensions, checksums. Lists
    every difference; exits 1 when there is one.

    Examples:

      aegisctl schema verify

      aegisctl schema verify --format json
    """
    from aegisctl.errors import OperationFailed
    from aegisctl.schema.verify import verify_schema

    app_state = state(ctx)
    settings = app_state.config().settings
    with app_state.connect("schema verify", "ddl") as conn:
        report = verify_schema(conn, settings.schema.extensions)
    output.render(report, app_state.fmt(fmt))
    if not report.ok:
        raise OperationFailed(f"{len(report.differences)} difference(s) between the database "
                              "and its migrations")


class PartitionInterval(StrEnum):
    month = "month"


@app.command("partition")
@asks(unless_dry_run)
def partition(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(metavar="TABLE", help="NAME or SCHEMA.NAME.")],
    by: Annotated[PartitionInterval, typer.Option(
        "--by", help="One partition per calendar month (UTC).")] = PartitionInterval.month,
    column: Annotated[str | None, typer.Option(
        "--column", help="The timestamptz/timestamp/date column to partition by (default: the "
        "table's entry in `partitions:`, else created_at).")] = None,
    premake: Annotated[int | None, typer.Option(
        "--premake", min=1, max=120, help="Months created ahead beyond the current one "
        "(default: partitions.<table>.premake, else 3).")] = None,
    default_partition: Annotated[bool | None, typer.Option(
        "--default-partition/--no-default-partition",
        help="Add a DEFAULT partition for rows no month partition holds (default: yes).")
    ] = None,
    lock_timeout: Annotated[float, typer.Option(
        "--lock-timeout", metavar="SECONDS", min=0.01, help="How long each short transaction "
        "may wait for its locks before it rolls back and retries (a writer never waits on us "
        "longer than this plus the milliseconds a step holds its lock).")] = 0.1,
    dry_run: Annotated[bool, dry_run_option("Show the plan, its locks and statements; change "
                                            "nothing.")] = False,
    yes: Annotated[bool, yes_option()] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Turn TABLE into a table range-partitioned by month, online: writes go on and no row is
    lost.

    The table becomes the first partition as it is (nothing is copied): a NOT VALID check
    bounds its rows, is validated without blocking writes, a new partitioned parent is built
    beside it with the same columns, defaults, indexes (HNSW included), constraints, owner,
    grants and comments and the months ahead, then one short transaction swaps the names
    and attaches the old table. Each step says which lock it takes and for how long; each
    waits at most --lock-timeout for its locks and retries. Refused, with the fix: a primary
    key or unique index without the column, foreign keys pointing at the table, NULLs in the
    column. Interrupted (even kill -9), run it again: it finishes.

    Examples:

      aegisctl schema partition api_usage_events --by month --dry-run

      aegisctl schema partition api_usage_events --by month --column created_at --yes
    """
    from aegisctl.cli.interrupt import graceful_stop
    from aegisctl.maintenance.joblock import job_lock
    from aegisctl.maintenance.runner import ensure_primary
    from aegisctl.schema.partition import convert_table
    from aegisctl.schema.partition_tx import LockPolicy

    del by  # month is the only interval
    app_state = state(ctx)
    loaded = app_state.config()
    spec = _partition_spec(loaded.settings.partitions, table)
    chosen_column = column or (spec.column if spec else "created_at")
    chosen_premake = premake or (spec.premake if spec else 3)
    with_default = default_partition if default_partition is not None else (
        spec.default_partition if spec else True)
    out = app_state.fmt(fmt)
    maint = loaded.settings.maintenance
    lock = contextlib.nullcontext() if dry_run else job_lock(
        loaded, app_state.target(), "schema partition", wait_lock)
    with lock, graceful_stop("step") as stop, \
            app_state.connect("schema partition", "maintenance") as conn:
        policy = LockPolicy(lock_timeout=lock_timeout, attempts=max(maint.lock_attempts, 20),
                            max_delay=maint.lock_max_delay, should_stop=stop)
        plan = convert_table(conn, table, chosen_column, premake=chosen_premake,
                             default_partition=with_default, dry_run=True, policy=policy)
        if dry_run or plan.status != "planned":
            if not dry_run:
                plan = convert_table(conn, table, chosen_column, premake=chosen_premake,
                                     default_partition=with_default, policy=policy)
            output.render(plan, out)
            return
        ensure_primary(conn, "schema partition")
        if out is not OutputFormat.json:
            output.render(plan, "table")
        confirm(f"Partition {plan.table} by month on {chosen_column}?", yes)
        result = convert_table(conn, table, chosen_column, premake=chosen_premake,
                               default_partition=with_default, policy=policy)
    output.render(result, out)


def _partition_spec(specs: dict[str, Any], table: str) -> Any:
    """The `partitions:` entry naming this table (by entry name, table or schema.table)."""
    for entry, spec in specs.items():
        name = spec.table_name(entry)
        if table in (entry, name, f"{spec.schema}.{name}"):
            return spec
    return None
