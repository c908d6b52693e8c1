"""The core's modules that once imported each other (directly or inside a function) no longer
do: the shared pieces live in modules of their own (backup.store.check_files,
backup.physical.walfiles, diagnostics.catalog, diagnostics.result, diagnostics.vector_scans,
schema.differences), and scheduling.jobs reads the settings through a protocol."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "aegisctl"


def _imports(module: str) -> set[str]:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize(("a", "b"), [
    ("aegisctl.backup.store", "aegisctl.backup.verify"),
    ("aegisctl.backup.physical.backups", "aegisctl.backup.physical.wal"),
    ("aegisctl.diagnostics.topics", "aegisctl.diagnostics.vectors"),
    ("aegisctl.config", "aegisctl.scheduling.jobs"),
    ("aegisctl.diagnostics.hints", "aegisctl.diagnostics.topics"),
    ("aegisctl.diagnostics.vector_checks", "aegisctl.diagnostics.vectors"),
    ("aegisctl.schema.verify", "aegisctl.schema.verify_partitions"),
])
def test_no_import_circle(a: str, b: str) -> None:
    assert not (b in _imports(a) and a in _imports(b)), f"{a} and {b} import each other"
