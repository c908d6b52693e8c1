"""aegisctl ext: PostgreSQL extensions."""

from __future__ import annotations

from typing import Annotated

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, state

app = typer.Typer(
    help=(
        "List and install the PostgreSQL extensions Aegis uses (schema.extensions): pgvector, "
        "pg_trgm, fuzzystrmatch, pg_stat_statements, and pgcrypto where the server has it.\n\n"
        "Example: aegisctl ext install"
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.command("list")
def list_cmd(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Show the configured extensions and every installed one: installed version, the
    version the server offers, and what to do when one is missing or outdated.

    Examples:

      aegisctl ext list

      aegisctl ext list --format json
    """
    from aegisctl.schema.extensions import ExtensionList, list_extensions

    app_state = state(ctx)
    settings = app_state.config().settings
    with app_state.connect("ext list") as conn:
        infos = list_extensions(conn, settings.schema.extensions)
    output.render(ExtensionList(infos), app_state.fmt(fmt))


@app.command()
def install(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(
        metavar="[NAME]...", help="Extensions to install (default: schema.extensions).")] = None,
    fmt: FormatOption = None,
) -> None:
    """Install extensions with CREATE EXTENSION IF NOT EXISTS (a no-op for installed ones).
    When one cannot be installed, says why and what to do: the package to install on the
    server, the privilege needed, or the shared_preload_libraries change. Exits 1 then.

    Examples:

      aegisctl ext install

      aegisctl ext install vector pg_trgm
    """
    from aegisctl.errors import OperationFailed
    from aegisctl.schema.extensions import install_extensions

    app_state = state(ctx)
    settings = app_state.config().settings
    with app_state.connect("ext install", "ddl") as conn:
        report = install_extensions(conn, names or None, settings.schema.extensions,
                                    raise_on_failure=False)
    output.render(report, app_state.fmt(fmt))
    if report.failed:
        raise OperationFailed("; ".join(a.message or a.name for a in report.failed))
