"""Start-up: `aegisctl --help` lists the groups without importing them, a group's help
imports only that group, and no help screen imports pydantic for options left at their
defaults; the global options still take and check every value as before. (Timings are in
bench/startup.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aegisctl.cli.main import LAZY_GROUPS, LISTED_HELP, short_help

PROBE = """
import sys
from aegisctl.cli.main import app
try:
    app({argv!r}, prog_name="aegisctl")
except SystemExit:
    pass
groups = sorted(m for m in sys.modules if m.startswith("aegisctl.cli.") and m.endswith("_cmd"))
print("GROUPS=" + ",".join(groups))
print("PYDANTIC=" + str("pydantic" in sys.modules))
"""


def _probe(*argv: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv))],
                          capture_output=True, text=True, timeout=60, check=True)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line
                and line.split("=", 1)[0] in ("GROUPS", "PYDANTIC"))


def test_top_level_help_imports_no_group_and_group_help_only_its_own() -> None:
    top = _probe("--help")
    assert top == {"GROUPS": "", "PYDANTIC": "False"}
    backup = _probe("backup", "--help")
    loaded = set(backup["GROUPS"].split(","))
    others = {module for name, module in LAZY_GROUPS.items() if name != "backup"}
    assert "aegisctl.cli.backup_cmd" in loaded and not loaded & others, loaded
    assert backup["PYDANTIC"] == "False"
    assert _probe("memory", "search", "--help")["PYDANTIC"] == "False"


def test_each_listed_line_is_the_groups_own_short_help() -> None:
    import typer

    from aegisctl.cli.main import app

    assert set(LISTED_HELP) == set(LAZY_GROUPS)
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    for name in LAZY_GROUPS:
        group = root.get_command(ctx, name)
        assert LISTED_HELP[name] == short_help(group.help), name


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--format", "xml", "config", "show"], "'xml' is not one of"),
    (["--log-format", "yaml", "config", "show"], "'yaml' is not one of"),
    (["--config", "/", "config", "show"], "is a directory"),
])
def test_global_options_still_refuse_bad_values(argv: list[str], fragment: str) -> None:
    script = str(Path(sys.executable).parent / "aegisctl")
    done = subprocess.run([script, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert fragment in done.stderr, done.stderr


def test_global_options_still_take_their_values(cli, write_config, tmp_path: Path) -> None:
    path = write_config({"embedded": {"database": "aegis"}})
    data = tmp_path / "data"
    shown = cli("--config", str(path), "--format", "json", "--log-format", "json",
                "--data-dir", str(data), "config", "show")
    assert shown.exit_code == 0, shown.output
    values = json.loads(shown.stdout)["values"]
    assert values["embedded.data_dir"]["value"] == str(data)
    assert values["embedded.data_dir"]["source"] == "--data-dir"
