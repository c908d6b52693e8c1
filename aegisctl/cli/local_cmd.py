"""aegisctl local: the embedded PostgreSQL used when no server is configured."""

from __future__ import annotations

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, state

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


@app.command()
def start(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Initialise (first time) and start the embedded server; a no-op when it runs.

    Example: aegisctl local start
    """
    output.render(_server(ctx).ensure_running(), state(ctx).fmt(fmt))


@app.command()
def stop(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Stop the embedded server (fast shutdown: open sessions are disconnected).

    Example: aegisctl local stop
    """
    output.render(_server(ctx).stop_result(), state(ctx).fmt(fmt))


@app.command()
def status(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Show whether the embedded server is initialised and running, and where.

    Example: aegisctl local status --format json
    """
    output.render(_server(ctx).status(), state(ctx).fmt(fmt))


@app.command()
def uri(
    ctx: typer.Context,
    database: str = typer.Option(None, "--database", "-d", help="Database (default: aegis)."),
    fmt: FormatOption = None,
) -> None:
    """Print the connection URI of the embedded server, starting it if needed.

    Examples:

      psql "$(aegisctl local uri)"

      aegisctl local uri --format json
    """
    output.render(_server(ctx).uri_result(database), state(ctx).fmt(fmt))
