"""aegisctl config: show and validate the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, state

app = typer.Typer(
    help="Inspect and check the YAML configuration.\n\nExample: aegisctl config show",
    no_args_is_help=True,
)


@app.command()
def show(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Print the effective configuration, secrets redacted, with where each value came from
    (the file and line, an environment variable, or the default).

    Examples:

      aegisctl config show

      aegisctl --config /etc/aegisctl/config.yaml config show --format json
    """
    from aegisctl.config_view import effective_config

    app_state = state(ctx)
    view = effective_config(app_state.config(), app_state.target())
    output.render(view, app_state.fmt(fmt))


@app.command()
def validate(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Argument(help="File to check (default: the one "
                                                     "aegisctl would use).")] = None,
    fmt: FormatOption = None,
) -> None:
    """Check a config file: YAML syntax, unknown keys, types and values. Exits 0 when valid,
    2 with the first problem (file, line, key path) when not.

    Examples:

      aegisctl config validate /etc/aegisctl/config.yaml

      aegisctl config validate && systemctl restart aegisctl-backup.timer
    """
    from aegisctl.cli.command_tree import check_schedule_commands, schedule_warnings
    from aegisctl.config import load_config
    from aegisctl.config_view import validation_result

    app_state = state(ctx)
    loaded = load_config(str(path) if path else app_state.config_path)
    check_schedule_commands(loaded.settings, str(loaded.path) if loaded.path
                            else "(no config file: defaults)")  # against the installed commands
    output.render(validation_result(loaded, schedule_warnings(loaded.settings)),
                  app_state.fmt(fmt))
