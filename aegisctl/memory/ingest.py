"""Writing memories: import JSON lines (binary COPY), add one, re-embed in resumable batches.

An import is one transaction: a bad line either stops it and nothing is kept, or (skip_bad) is
reported with its line number and left out. Duplicates — a text whose md5 (the tables'
generated `content_hash`) is already stored, or appeared earlier in the file — are skipped.
Rows without an `embedding` are embedded in batches by the configured provider.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed
from aegisctl.memory.refs import (
    IMPORTANCE_LEVELS,
    JSON_COLUMNS,
    KINDS,
    TABLES,
    TIME_COLUMNS,
    Kind,
)

if TYPE_CHECKING:
    import psycopg

    from aegisctl.memory.providers import EmbeddingProvider

CHUNK_ROWS = 2000
Progress = Callable[[str, int], None]  # (stage, rows just done)

# Binary COPY type of each column (text for varchar and the importance enum: same wire format).
COLUMN_TYPES = {
    "timestamp": "timestamptz", "created_at": "timestamptz", "updated_at": "timestamptz",
    "graphiti_synced_at": "timestamptz", "event_type": "text", "summary": "text",
    "details": "jsonb", "context": "jsonb", "metadata": "jsonb", "importance": "text",
    "tags": "text[]", "related_memories": "int4[]", "decision": "text", "concept": "text",
    "content": "text", "category": "text", "source": "text", "confidence": "float8",
    "embedding_recipe": "int2",
}
MAX_LENGTH = {"event_type": 100, "concept": 200, "category": 100, "source": 200}
IGNORED_KEYS = {"id", "kind", "score", "similarity", "keyword_score", "match", "ranks", "decay"}


class BadLine(Exception):
    pass


def _loads(line: str) -> Any:
    """orjson parses the 1536 floats of an embedding several times faster than json."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency
        return json.loads(line)
    return orjson.loads(line)


@dataclass
class ImportResult:
    lines: int = 0
    inserted: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    duplicates: int = 0
    embedded: int = 0
    without_embedding: int = 0
    bad_lines: list[dict[str, Any]] = field(default_factory=list)
    rolled_back: bool = False

    @property
    def total_inserted(self) -> int:
        return sum(self.inserted.values())


def content_hash(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def _time(value: Any, column: str) -> dt.datetime:
    if not isinstance(value, str):
        raise BadLine(f"{column}: expected an ISO timestamp string")
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadLine(f"{column}: {value!r} is not an ISO timestamp") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _string_list(value: Any, column: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadLine(f"{column}: expected a list of strings")
    return value


def parse_record(obj: Any, dim: int) -> tuple[Kind, dict[str, Any]]:
    """A validated row for COPY from one decoded JSON line."""
    if not isinstance(obj, dict):
        raise BadLine("expected a JSON object")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise BadLine(f"kind must be 'episodic' or 'semantic', got {kind!r}")
    info = TABLES[kind]
    unknown = sorted(set(obj) - set(info.columns) - IGNORED_KEYS - {"embedding"})
    if unknown:
        raise BadLine(f"unknown key(s) for {kind} memory: {', '.join(unknown)}")
    for column in info.required:
        if not isinstance(obj.get(column), str) or not obj[column].strip():
            raise BadLine(f"{column} is required (a non-empty string)")
    row: dict[str, Any] = {}
    for column in info.columns:
        value = obj.get(column)
        if value is None:
            row[column] = None
        elif column in TIME_COLUMNS:
            row[column] = _time(value, column)
        elif column in JSON_COLUMNS:
            row[column] = value
        elif column == "tags":
            row[column] = _string_list(value, column)
        elif column == "related_memories":
            if not isinstance(value, list) or not all(type(v) is int for v in value):
                raise BadLine("related_memories: expected a list of integers")
            row[column] = value
        elif column == "importance":
            if value not in IMPORTANCE_LEVELS:
                raise BadLine(f"importance must be one of {', '.join(IMPORTANCE_LEVELS)}")
            row[column] = value
        elif column == "confidence":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadLine("confidence: expected a number")
            row[column] = float(value)
        else:
            if not isinstance(value, str):
                raise BadLine(f"{column}: expected a string")
            if column in MAX_LENGTH and len(value) > MAX_LENGTH[column]:
                raise BadLine(f"{column}: longer than {MAX_LENGTH[column]} characters")
            if "\x00" in value:
                raise BadLine(f"{column}: contains a NUL character")
            row[column] = value
    row["embedding"] = _embedding(obj.get("embedding"), dim)
    return kind, row


def _embedding(value: Any, dim: int) -> array[float] | None:
    """A float32 array of the database's dimension (fast: a C loop, not a Python one)."""
    if value is None:
        return None
    try:
        if not isinstance(value, list):
            raise TypeError
        vector = array("f", value)
    except (TypeError, OverflowError):
        vector = None
    # sum() is NaN or infinite when any element is (float32 overflow included).
    if vector is None or len(vector) != dim or not math.isfinite(sum(vector)):
        got = len(value) if isinstance(value, list) else type(value).__name__
        raise BadLine(f"embedding: expected {dim} finite numbers (the database's "
                      f"dimension), got {got}")
    return vector


def read_lines(lines: Iterable[str], dim: int, result: ImportResult, skip_bad: bool
               ) -> Iterator[tuple[int, Kind, dict[str, Any]]]:
    for number, line in enumerate(lines, start=1):
        result.lines = number
        if not line.strip():
            continue
        try:
            kind, row = parse_record(_loads(line), dim)
        except (BadLine, ValueError) as exc:
            message = str(exc) if isinstance(exc, BadLine) else f"invalid JSON: {exc}"
            result.bad_lines.append({"line": number, "error": message})
            if not skip_bad:
                raise OperationFailed(
                    f"line {number}: {message}; nothing was imported",
                    hint="fix the line, or pass --skip-bad to import the other lines",
                ) from None
            continue
        yield number, kind, row


# ---------------------------------------------------------------------------------------------
# Loading


def _fill_defaults(kind: Kind, row: dict[str, Any], now: dt.datetime) -> None:
    """COPY sends every listed column, so the tables' defaults are applied here."""
    if kind == "episodic":
        row["timestamp"] = row["timestamp"] or now
        row["importance"] = row["importance"] or "medium"
    else:
        row["confidence"] = 1.0 if row["confidence"] is None else row["confidence"]
        row["updated_at"] = row["updated_at"] or row["created_at"] or now
    row["created_at"] = row["created_at"] or now


def _existing_hashes(conn: psycopg.Connection[Any], kind: Kind, hashes: list[str]) -> set[str]:
    from psycopg import sql

    query = sql.SQL("SELECT DISTINCT content_hash FROM {} WHERE content_hash = ANY(%s)").format(
        sql.Identifier(TABLES[kind].table))
    return {str(r[0]) for r in conn.execute(query, (hashes,)).fetchall()}


def _vector_binary(vector: array[float]) -> bytes:
    """pgvector's binary input: dim (int16), unused (int16), float32s, all big-endian."""
    if sys.byteorder == "little":
        vector = array("f", vector)
        vector.byteswap()
    return struct.pack(">HH", len(vector), 0) + vector.tobytes()


class _CopyStream:
    """One binary COPY kept open across chunks (closed only when the kind changes or a query
    must run on this connection), its rows sent by a writer thread: Python parses the next
    rows while the server inserts the previous ones."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.kind: Kind | None = None
        self._cursor: Any = None
        self._copy: Any = None
        self._context: Any = None
        self.columns: list[str] = []

    def open(self, kind: Kind) -> None:
        from psycopg import sql
        from psycopg.copy import QueuedLibpqWriter

        if self.kind == kind:
            return
        self.close()
        self.columns = [*TABLES[kind].columns, "embedding", "embedding_recipe"]
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(TABLES[kind].table),
            sql.SQL(", ").join(map(sql.Identifier, self.columns)))
        self._cursor = self.conn.cursor()
        self._context = self._cursor.copy(statement, writer=QueuedLibpqWriter(self._cursor))
        self._copy = self._context.__enter__()
        # The vector column goes as raw bytes in pgvector's binary format (bytea's dumper
        # passes them through unchanged).
        self._copy.set_types([COLUMN_TYPES[c] if c != "embedding" else "bytea"
                              for c in self.columns])
        self.kind = kind

    def write(self, row: dict[str, Any]) -> None:
        from psycopg.types.json import Jsonb

        values = []
        for column in self.columns:
            value = row.get(column)
            if value is not None and column in JSON_COLUMNS:
                value = Jsonb(value)
            elif value is not None and column == "embedding":
                value = _vector_binary(value)
            values.append(value)
        self._copy.write_row(values)

    def close(self, error: BaseException | None = None) -> None:
        if self._copy is not None:
            context, cursor = self._context, self._cursor
            self._copy = self._cursor = self._context = None
            self.kind = None
            try:
                context.__exit__(type(error) if error else None, error, None)
            finally:
                cursor.close()


def import_lines(conn: psycopg.Connection[Any], lines: Iterable[str], dim: int,
                 provider: EmbeddingProvider | None, *, skip_bad: bool = False,
                 progress: Progress | None = None,
                 lookup: psycopg.Connection[Any] | None = None) -> ImportResult:
    """Import JSON lines in one transaction (rolled back on a bad line unless skip_bad).

    `lookup`, a second connection, answers the duplicate checks so the COPY on `conn` can
    stay open for the whole file; without it the COPY is closed for each check.
    """
    result = ImportResult()
    seen: set[tuple[str, str]] = set()
    try:
        with conn.transaction():
            now_row = conn.execute("SELECT now()").fetchone()
            assert now_row is not None
            stream = _CopyStream(conn)
            try:
                chunk: list[tuple[Kind, dict[str, Any]]] = []
                for _, kind, row in read_lines(lines, dim, result, skip_bad):
                    chunk.append((kind, row))
                    if len(chunk) >= CHUNK_ROWS:
                        _load_chunk(stream, lookup, chunk, provider, now_row[0], seen, result,
                                    progress)
                        chunk = []
                _load_chunk(stream, lookup, chunk, provider, now_row[0], seen, result,
                            progress)
            except BaseException as exc:
                stream.close(exc)
                raise
            stream.close()
    except OperationFailed:
        result.rolled_back = True
        raise
    # Fresh statistics: search decides between the index and an exact scan from the planner's
    # row estimates, and keyword ranking reads the table size from them.
    for kind in KINDS:
        if result.inserted[kind]:
            from psycopg import sql

            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(TABLES[kind].table)))
    return result


def _load_chunk(stream: _CopyStream, lookup: psycopg.Connection[Any] | None,
                chunk: list[tuple[Kind, dict[str, Any]]], provider: EmbeddingProvider | None,
                now: dt.datetime, seen: set[tuple[str, str]], result: ImportResult,
                progress: Progress | None) -> None:
    from aegisctl.memory.providers import embed_texts
    from aegisctl.memory.recipe import RECIPE_VERSION, embed_text

    if not chunk:
        return
    if lookup is None:
        stream.close()
    hashes: dict[Kind, list[str]] = {k: [] for k in KINDS}
    digests = []
    for kind, row in chunk:
        digest = content_hash(row[TABLES[kind].text])
        digests.append(digest)
        hashes[kind].append(digest)
    existing = {kind: _existing_hashes(lookup or stream.conn, kind, sorted(set(found)))
                for kind, found in hashes.items() if found}
    fresh: list[tuple[Kind, dict[str, Any]]] = []
    for (kind, row), digest in zip(chunk, digests, strict=True):
        if digest in existing[kind] or (kind, digest) in seen:
            result.duplicates += 1
            continue
        seen.add((kind, digest))
        _fill_defaults(kind, row, now)
        fresh.append((kind, row))
    missing = [(k, r) for k, r in fresh if r["embedding"] is None]
    if missing and provider is not None:
        vectors = embed_texts(provider, [embed_text(k, r) for k, r in missing],
                              (lambda n: progress("embedding", n)) if progress else None)
        for (_, row), vector in zip(missing, vectors, strict=True):
            row["embedding"] = array("f", vector)
            row["embedding_recipe"] = RECIPE_VERSION
        result.embedded += len(missing)
    elif missing:
        result.without_embedding += len(missing)
    for kind, row in fresh:
        stream.open(kind)
        stream.write(row)
        result.inserted[kind] += 1
    if progress:
        progress("loading", len(chunk))


def add_memory(conn: psycopg.Connection[Any], obj: dict[str, Any], dim: int,
               provider: EmbeddingProvider | None) -> tuple[str, bool]:
    """Insert one memory; returns (its id, inserted) — inserted is False for a duplicate."""
    from psycopg import sql

    kind, row = parse_record(obj, dim)
    info = TABLES[kind]
    digest = content_hash(row[info.text])
    found = conn.execute(
        sql.SQL("SELECT id FROM {} WHERE content_hash = %s ORDER BY id LIMIT 1").format(
            sql.Identifier(info.table)), (digest,)).fetchone()
    if found is not None:
        return f"{kind}:{found[0]}", False
    from psycopg.types.json import Jsonb

    from aegisctl.memory.providers import embed_texts, vector_literal
    from aegisctl.memory.recipe import RECIPE_VERSION, embed_text

    if row["embedding"] is None and provider is not None:
        row["embedding"] = embed_texts(provider, [embed_text(kind, row)])[0]
        row["embedding_recipe"] = RECIPE_VERSION
    columns = [c for c in (*info.columns, "embedding", "embedding_recipe")
               if row.get(c) is not None]
    values = []
    for column in columns:
        value = row[column]
        if column in JSON_COLUMNS:
            value = Jsonb(value)
        elif column == "embedding":
            value = vector_literal(list(value))
        values.append(value)
    placeholders = [sql.SQL("%s::vector") if c == "embedding" else sql.Placeholder()
                    for c in columns]
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        sql.Identifier(info.table), sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(placeholders))
    inserted = conn.execute(statement, values).fetchone()
    assert inserted is not None
    return f"{kind}:{inserted[0]}", True
