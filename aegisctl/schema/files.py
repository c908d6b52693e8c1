"""Migration files: discovery, checksums, template rendering and statement splitting.

A migration is `NNNN_name.sql`. It is a template: `{{embedding_dim}}`, `{{embedding_hnsw_key}}`
and `{{embedding_index_expr}}` are replaced when it is applied; the checksum is taken over the
file as shipped, so it does not depend on the dimension. A file containing the line
`-- aegisctl: no-transaction` runs statement by statement outside a transaction (for
`CREATE INDEX CONCURRENTLY` and the like).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aegisctl.errors import ConfigError
from aegisctl.schema.dimension import embedding_index_expr, hnsw_index_key

NO_TRANSACTION_MARKER = "-- aegisctl: no-transaction"
_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_MARKER = re.compile(r"^\s*--\s*aegisctl:\s*no-transaction\s*$", re.MULTILINE)


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str
    path: Path
    text: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def transactional(self) -> bool:
        return _MARKER.search(self.text) is None

    def render(self, dim: int) -> str:
        return render_template(self.text, dim, self.filename)


@dataclass(frozen=True)
class Statement:
    text: str
    line: int  # 1-based line of the file where the statement starts
    index: int  # 1-based position in the file


def load_migrations(directory: Path) -> list[MigrationFile]:
    """Every NNNN_name.sql in the folder, in version order."""
    if not directory.is_dir():
        raise ConfigError(f"migrations folder {directory} does not exist",
                          hint="reinstall aegisctl, or fix AEGISCTL_SQL_DIR")
    found: dict[int, MigrationFile] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ConfigError(f"{path}: a migration file must be named NNNN_name.sql")
        raw = path.read_bytes()
        version = int(match.group(1))
        if version in found:
            raise ConfigError(
                f"{path.name} and {found[version].filename} have the same version {version:04d}"
            )
        found[version] = MigrationFile(
            version=version, name=match.group(2), path=path,
            text=raw.decode("utf-8"), sha256=hashlib.sha256(raw).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


def render_template(text: str, dim: int, origin: str) -> str:
    values = {
        "embedding_dim": str(dim),
        "embedding_hnsw_key": hnsw_index_key(dim),
        "embedding_index_expr": embedding_index_expr(dim),
    }

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ConfigError(f"{origin}: unknown placeholder {{{{{key}}}}}",
                              hint=f"known: {', '.join(sorted(values))}")
        return values[key]

    return _PLACEHOLDER.sub(substitute, text)


def split_statements(sql_text: str) -> list[Statement]:
    """Split SQL into statements at top-level semicolons, respecting quotes, dollar quotes and
    comments, so a failure can name the statement and its line."""
    statements: list[Statement] = []
    i, n = 0, len(sql_text)
    start: int | None = None
    line = 1
    start_line = 1

    def flush(end: int) -> None:
        nonlocal start
        if start is not None:
            text = sql_text[start:end].strip()
            if text:
                statements.append(Statement(text, start_line, len(statements) + 1))
        start = None

    while i < n:
        ch = sql_text[i]
        nxt = sql_text[i + 1] if i + 1 < n else ""
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch == "-" and nxt == "-":
            end = sql_text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if sql_text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql_text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            line += sql_text.count("\n", i, j)
            i = j
            continue
        if ch.isspace():
            i += 1
            continue
        if start is None:
            start, start_line = i, line
        if ch == ";":
            flush(i)
            i += 1
            continue
        j = _skip_quoted(sql_text, i)
        line += sql_text.count("\n", i, j)
        i = j
    flush(n)
    return statements


_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _skip_quoted(text: str, i: int) -> int:
    """Index just past the token at i: a quoted string/identifier, a dollar-quoted body, or one
    ordinary character."""
    ch = text[i]
    if ch in "'\"":
        escapes = ch == "'" and i > 0 and text[i - 1] in "eE" and (
            i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
        j = i + 1
        while j < len(text):
            if escapes and text[j] == "\\":
                j += 2
                continue
            if text[j] == ch:
                if j + 1 < len(text) and text[j + 1] == ch:
                    j += 2
                    continue
                return j + 1
            j += 1
        return len(text)
    if ch == "$" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
        match = _DOLLAR.match(text, i)
        if match:
            tag = match.group(0)
            end = text.find(tag, match.end())
            return len(text) if end < 0 else end + len(tag)
    return i + 1
