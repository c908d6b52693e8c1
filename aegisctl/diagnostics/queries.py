"""The diagnostic SQL files: `sql/diagnostics/<topic>.sql`, each a few named queries.

A query starts at a `-- name: <name>` line (`-- name: <name> fields` for a one-row result shown
as fields); everything up to the next such line belongs to it. Parameters are psycopg's
`%(name)s`; a literal percent sign is written `%%`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aegisctl.errors import OperationFailed
from aegisctl.resources import sql_dir

_HEADER = re.compile(r"^--\s*name:\s*([a-z_]+)(\s+fields)?\s*$", re.MULTILINE)


@dataclass(frozen=True)
class NamedQuery:
    name: str
    sql: str
    fields: bool  # one row, shown as key/value fields


def diagnostics_dir() -> Path:
    folder = sql_dir() / "diagnostics"
    if folder.is_dir():
        return folder
    # AEGISCTL_SQL_DIR may point at a site's own migrations only: fall back to ours.
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "sql" / "diagnostics", package.parent / "sql" / "diagnostics"):
        if candidate.is_dir():
            return candidate
    return folder


@cache
def load(topic: str) -> tuple[NamedQuery, ...]:
    path = diagnostics_dir() / f"{topic}.sql"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OperationFailed(f"diagnostic SQL {path} is missing: {exc.strerror}",
                              hint="reinstall aegisctl") from None
    matches = list(_HEADER.finditer(text))
    queries = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end():end].strip()
        queries.append(NamedQuery(match.group(1), body, bool(match.group(2))))
    return tuple(queries)


def query(topic: str, name: str) -> NamedQuery:
    for item in load(topic):
        if item.name == name:
            return item
    raise OperationFailed(f"diagnostic SQL {topic}.sql has no query named {name}")
