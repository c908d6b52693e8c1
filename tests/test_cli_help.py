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
