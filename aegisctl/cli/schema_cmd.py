"""aegisctl schema: init, status, migrate, verify."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, OutputFormat, state
from aegisctl.cli.options import dry_run_option

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
    output.render(result, out)


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
