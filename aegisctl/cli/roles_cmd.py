"""aegisctl roles: least-privilege database roles."""

from __future__ import annotations

from typing import Annotated

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, OutputFormat, state
from aegisctl.cli.options import dry_run_option

app = typer.Typer(
    help=(
        "Least-privilege roles from the `roles` section of the config: an application role "
        "(read/write on the memory and operational tables) and a read-only role.\n\n"
        "Example: aegisctl roles apply --dry-run"
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    # A callback keeps `roles` a group (Typer would otherwise collapse a single command into it).
    pass


@app.command()
def apply(
    ctx: typer.Context,
    dry_run: Annotated[bool, dry_run_option("Print the statements; change "
                                          "nothing.")] = False,
    fmt: FormatOption = None,
) -> None:
    """Create or update the application and read-only roles and their privileges, in one
    transaction. Idempotent; re-run it after `schema migrate` adds tables. Passwords come from
    roles.*.password_env / password_file and are never shown (PASSWORD '***').

    Examples:

      aegisctl roles apply --dry-run

      AEGIS_APP_PASSWORD=... aegisctl roles apply
    """
    from aegisctl.roles import apply_roles

    app_state = state(ctx)
    settings = app_state.config().settings
    with app_state.connect("roles apply", "ddl") as conn:
        result = apply_roles(conn, settings.roles, dry_run=dry_run)
    out = app_state.fmt(fmt)
    output.render(result, out)
    if out is OutputFormat.table:
        for line in result.status_lines():
            output.print_status(line)
