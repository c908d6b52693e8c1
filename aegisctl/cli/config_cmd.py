"""aegisctl config: show and validate the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, OutputFormat, state

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
    if app_state.fmt(fmt) is OutputFormat.json:
        output.emit_json(view.to_json())
        return
    output.print_line(f"# config file: {view.path or '(none found: defaults)'}")
    output.print_line(f"# target: {view.target} ({view.target_source})")
    output.print_table(["key", "value", "source"],
                       [(row.key, _cell(row.value), row.source) for row in view.rows])


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "[]"
    return "null" if value is None else str(value)


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
    from aegisctl.cli.command_tree import check_schedule_commands
    from aegisctl.config import load_config

    app_state = state(ctx)
    loaded = load_config(str(path) if path else app_state.config_path)
    where = str(loaded.path) if loaded.path else "(no config file: defaults)"
    check_schedule_commands(loaded.settings, where)  # against the installed command tree
    if app_state.fmt(fmt) is OutputFormat.json:
        output.emit_json({"valid": True, "path": where, "targets": sorted(loaded.settings.targets)})
    else:
        output.print_line(f"{where}: valid")
