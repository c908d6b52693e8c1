"""aegisctl local: the embedded PostgreSQL used when no server is configured."""

from __future__ import annotations

from typing import Annotated

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, confirm, state
from aegisctl.cli.options import asks, dry_run_option, unless_dry_run, yes_option

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
    """Initialise (first time) and start the embedded server; a no-op when it runs. When
    maintenance.prewarm.after lists server_start, a server it started has its vector indexes
    loaded into memory (maint prewarm) right away.

    Example: aegisctl local start
    """
    result = _server(ctx).ensure_running()
    output.render(result, state(ctx).fmt(fmt))
    if result.started_now and result.uri:
        import psycopg

        from aegisctl.cli.maint_cmd import prewarm_hook

        uri = result.uri
        prewarm_hook(state(ctx), "server_start",
                     lambda: psycopg.connect(uri, autocommit=True,
                                             application_name="aegisctl maint prewarm"))


@app.command()
@asks(unless_dry_run)
def stop(
    ctx: typer.Context,
    dry_run: Annotated[bool, dry_run_option(
        "Say whether it runs and which sessions a stop would disconnect; stop nothing.")
    ] = False,
    yes: Annotated[bool, yes_option("Do not ask before disconnecting connected sessions.")
                   ] = False,
    fmt: FormatOption = None,
) -> None:
    """Stop the embedded server (fast shutdown: open sessions are disconnected).

    When clients are connected it first says how many and which (pid, user, application,
    client address, database), then asks; without a terminal it needs --yes (exit 2
    otherwise, nothing stopped). With nobody connected it stops without asking.

    Examples:

      aegisctl local stop

      aegisctl local stop --dry-run --format json

      aegisctl local stop --yes
    """
    server = _server(ctx)
    sessions = server.sessions()
    if not dry_run and not yes and sessions != []:  # with --yes the result lists them
        if sessions is None:
            question = ("Could not list the sessions connected to the embedded server; stop it "
                        "anyway (any session is disconnected)?")
        else:
            output.print_status(f"{len(sessions)} session(s) connected to the embedded server "
                                f"({server.data_dir}) would be disconnected:")
            for session in sessions:
                output.print_status(f"  {session.describe()}")
            question = f"Stop the embedded server and disconnect {len(sessions)} session(s)?"
        confirm(question, yes)
    output.render(server.stop_result(sessions, dry_run=dry_run), state(ctx).fmt(fmt))


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
