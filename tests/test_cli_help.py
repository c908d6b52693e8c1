"""Group help lists one short line per command (the first sentence of its help), not the
whole docstring wrapped and cut at 80 columns."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from aegisctl.cli.main import LAZY_GROUPS, app

GROUPS = ["", *LAZY_GROUPS, "backup physical", "backup wal"]


@pytest.mark.parametrize("group", GROUPS)
def test_group_help_lists_one_line_per_command(group: str, clean_env) -> None:
    args = [*group.split(), "--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    panel = result.stdout.split("Commands ", 1)
    if len(panel) < 2:
        pytest.skip(f"aegisctl {group} has no sub-commands")
    rows = [ln for ln in panel[1].splitlines() if ln.startswith("│")]
    continued = [ln for ln in rows if re.match(r"│\s{3,}\S", ln)]
    assert rows and not continued, f"aegisctl {group} --help wraps: {continued[:2]}"


def test_physical_commands_of_their_own_and_hidden_aliases(clean_env) -> None:
    from aegisctl.cli.command_tree import check_command

    for argv in (["backup", "physical", "create", "--incremental"],
                 ["backup", "physical", "restore", "--latest", "--target-dir", "/tmp/x"],
                 ["backup", "physical", "drill", "--to-time", "2026-01-31T14:05:00Z"],
                 ["backup", "create", "--physical", "--incremental"],  # aliases, one release
                 ["backup", "restore", "--physical", "--latest", "--target-dir", "/tmp/x"],
                 ["backup", "drill", "--physical"]):
        check_command(argv)
    runner = CliRunner()
    group = runner.invoke(app, ["backup", "--help"], env={"COLUMNS": "100"}).stdout
    assert "│ drill" not in group
    physical = runner.invoke(app, ["backup", "physical", "--help"],
                             env={"COLUMNS": "100"}).stdout
    assert "│ create" in physical and "│ restore" in physical and "│ drill" in physical
    create = runner.invoke(app, ["backup", "create", "--help"], env={"COLUMNS": "100"}).stdout
    assert "--physical" not in create
