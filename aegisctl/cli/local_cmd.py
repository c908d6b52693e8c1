"""aegisctl local: the embedded PostgreSQL used when no server is configured."""

from __future__ import annotations

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, OutputFormat, state

app = typer.Typer(
    help=(
        "Manage the embedded PostgreSQL 18 + pgvector that aegisctl uses when no target is "
        "configured. It starts on first use and keeps running like a local service.\n\n"
        "Example: aegisctl local status"
    ),
    no_args_is_help=True,
)


def _server(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from aegisctl.local import server_for

    settings = state(ctx).config().settings
    return server_for(settings.embedded.data_dir, settings.embedded.database,
                      settings.embedded.run_as)


def _render(status_obj, fmt: OutputFormat, title: str) -> None:  # type: ignore[no-untyped-def]
    if fmt is OutputFormat.json:
        output.emit_json(status_obj)
        return
    output.print_fields(
        [
            ("state", "running" if status_obj.running else
             "stopped" if status_obj.initialized else "not initialised"),
            ("data dir", status_obj.data_dir),
            ("pid", status_obj.pid),
            ("uri", status_obj.uri),
            ("PostgreSQL", status_obj.server_version),
            ("runs as", status_obj.run_as or "the current user"),
            ("log", status_obj.log_file),
        ],
        title=title,
    )


@app.command()
def start(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Initialise (first time) and start the embedded server; a no-op when it runs.

    Example: aegisctl local start
    """
    result = _server(ctx).ensure_running()
    _render(result, state(ctx).fmt(fmt), "started" if result.started_now else "already running")


@app.command()
def stop(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Stop the embedded server (fast shutdown: open sessions are disconnected).

    Example: aegisctl local stop
    """
    server = _server(ctx)
    was_running = server.stop()
    if state(ctx).fmt(fmt) is OutputFormat.json:
        output.emit_json({"stopped": was_running, "data_dir": str(server.data_dir)})
    else:
        output.print_line("stopped" if was_running else "not running")


@app.command()
def status(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Show whether the embedded server is initialised and running, and where.

    Example: aegisctl local status --format json
    """
    _render(_server(ctx).status(), state(ctx).fmt(fmt), "embedded PostgreSQL")


@app.command()
def uri(
    ctx: typer.Context,
    database: str = typer.Option(None, "--database", "-d", help="Database (default: aegis)."),
) -> None:
    """Print the connection URI of the embedded server, starting it if needed.

    Example: psql "$(aegisctl local uri)"
    """
    server = _server(ctx)
    server.ensure_running()
    output.print_line(server.uri(database))
