"""Where the SQL files shipped with aegisctl live.

From a source checkout they are the repo-top `sql/`; from an installed wheel they are
`aegisctl/sql/` (pyproject maps one onto the other). `AEGISCTL_SQL_DIR` points elsewhere, for
tests and for a site that keeps its own migrations.
"""

from __future__ import annotations

import os
from pathlib import Path

SQL_DIR_ENV = "AEGISCTL_SQL_DIR"


def sql_dir() -> Path:
    """The folder holding migrations/ and diagnostics/."""
    override = os.environ.get(SQL_DIR_ENV)
    if override:
        return Path(override).expanduser()
    package = Path(__file__).resolve().parent
    for candidate in (package / "sql", package.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    try:
        from importlib.resources import files

        located = Path(str(files("aegisctl.sql")))
        if located.is_dir():
            return located
    except (ModuleNotFoundError, TypeError):
        pass
    return package.parent / "sql"


def migrations_dir() -> Path:
    return sql_dir() / "migrations"
