"""The README's "What survives what" table: every row names the test that backs it, and that
test exists (a row without one would be a promise nobody checks)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## What survives what")
    end = text.index("\n## ", start + 1)
    rows = [line for line in text[start:end].splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def test_every_row_of_the_fault_table_names_an_existing_test() -> None:
    rows = _rows()
    assert len(rows) >= 10
    for cells in rows:
        assert len(cells) == 4, cells
        tests = re.findall(r"`(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`", cells[3])
        assert tests, f"no test named for: {cells[0]}"
        for file, name in tests:
            source = (ROOT / "tests" / file).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"{file}::{name} is missing"
