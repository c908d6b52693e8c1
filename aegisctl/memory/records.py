"""Reading JSON lines of memories: bounded line reads, decoding, and validation of each record.

Every line is read with a bounded `readline`, so a 50 MB line costs at most `max_line_bytes`
of memory before it is reported; it is decoded as strict UTF-8 (a UTF-8 byte-order mark at the
start of the file is skipped); then it must be one JSON object describing an episodic or a
semantic memory. Problems become `BadLine`s reported by line number.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from aegisctl.memory.refs import (
    IMPORTANCE_LEVELS,
    JSON_COLUMNS,
    KINDS,
    TABLES,
    TIME_COLUMNS,
    Kind,
)

MAX_LENGTH = {"event_type": 100, "concept": 200, "category": 100, "source": 200}
IGNORED_KEYS = {"id", "kind", "score", "similarity", "keyword_score", "match", "ranks", "decay"}
BOM = b"\xef\xbb\xbf"
_DISCARD_CHUNK = 1024 * 1024


class BadLine(Exception):
    pass


@dataclass
class RawLine:
    number: int
    text: str | None  # None: the line could not be read (error says why)
    error: str | None = None
    end: int = 0  # bytes of the stream read up to the end of this line


def _loads(line: str) -> Any:
    """orjson parses the 1536 floats of an embedding several times faster than json."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency
        return json.loads(line)
    return orjson.loads(line)


def iter_raw_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[RawLine]:
    """Each line of a binary stream, decoded; oversized or undecodable lines carry an error.

    An oversized line is skipped in chunks up to its newline: never held in memory whole.
    """
    number = end = 0
    while True:
        data = stream.readline(max_line_bytes + 2)  # room for the line's own "\r\n"
        if not data:
            return
        number += 1
        end += len(data)
        if number == 1 and data.startswith(BOM):
            data = data[len(BOM):]
        body = data[:-1] if data.endswith(b"\n") else data
        body = body[:-1] if body.endswith(b"\r") else body
        if len(body) > max_line_bytes:
            size = len(data)
            while not data.endswith(b"\n"):
                data = stream.readline(_DISCARD_CHUNK)
                if not data:
                    break
                size += len(data)
                end += len(data)
            yield RawLine(number, None, f"line longer than memory.max_line_bytes "
                                        f"({max_line_bytes} bytes; this one has at least "
                                        f"{size})", end)
            continue
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawLine(number, None, f"not valid UTF-8 (byte {exc.start + 1} of the line)",
                          end)
            continue
        yield RawLine(number, text, None, end)


def parse_line(text: str, dim: int) -> tuple[Kind, dict[str, Any]]:
    """A validated row from one line of JSON (BadLine when it is not one)."""
    try:
        obj = _loads(text)
    except ValueError as exc:
        raise BadLine(f"invalid JSON: {exc}") from None
    return parse_record(obj, dim)


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
    if any("\x00" in v for v in value):
        raise BadLine(f"{column}: contains a NUL character")
    return value


def _confidence(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadLine("confidence: expected a number")
    if not 0.0 <= float(value) <= 1.0:  # NaN fails this too
        raise BadLine(f"confidence: {value!r} is outside 0..1")
    return float(value)


def _column(column: str, value: Any) -> Any:
    if column in TIME_COLUMNS:
        return _time(value, column)
    if column in JSON_COLUMNS:
        return value
    if column == "tags":
        return _string_list(value, column)
    if column == "related_memories":
        if not isinstance(value, list) or not all(type(v) is int and -2**31 <= v < 2**31
                                                  for v in value):
            raise BadLine("related_memories: expected a list of integers")
        return value
    if column == "importance":
        if value not in IMPORTANCE_LEVELS:
            raise BadLine(f"importance must be one of {', '.join(IMPORTANCE_LEVELS)}")
        return value
    if column == "confidence":
        return _confidence(value)
    if not isinstance(value, str):
        raise BadLine(f"{column}: expected a string")
    if column in MAX_LENGTH and len(value) > MAX_LENGTH[column]:
        raise BadLine(f"{column}: longer than {MAX_LENGTH[column]} characters")
    if "\x00" in value:
        raise BadLine(f"{column}: contains a NUL character")
    return value


def parse_record(obj: Any, dim: int) -> tuple[Kind, dict[str, Any]]:
    """A validated row (every column of the kind, plus `embedding`: None or float32 bytes)
    from one decoded object."""
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
        row[column] = None if value is None else _column(column, value)
    row["embedding"] = _embedding(obj.get("embedding"), dim)
    return kind, row


@functools.cache
def _float32s(dim: int) -> struct.Struct:
    # "=": standard sizes, where a value beyond float32 range is an OverflowError (in the
    # native "@" mode it silently becomes infinity).
    return struct.Struct(f"={dim}f")


def _embedding(value: Any, dim: int) -> bytes | None:
    """The vector as float32s in this machine's byte order (`vectors.to_vector` makes the
    pgvector `Vector` of them), of the database's dimension.

    The cheap way, as this runs for every line of an import: one C-level `sum` proves the
    numbers finite (JSON numbers are finite doubles; 1536 of them cannot add up to infinity),
    and one `struct` pack makes the float32s, refusing non-numbers and float32 overflow.
    """
    if value is None:
        return None
    packed = None
    if isinstance(value, list) and len(value) == dim:
        try:
            if math.isfinite(sum(value)):
                packed = _float32s(dim).pack(*value)
        except (TypeError, OverflowError, struct.error):
            packed = None
    if packed is None:
        if isinstance(value, list) and len(value) == dim:
            raise BadLine(f"embedding: element {_first_bad(value) + 1} is not a finite "
                          "number within float32 range")
        got = len(value) if isinstance(value, list) else type(value).__name__
        raise BadLine(f"embedding: expected {dim} finite numbers (the database's "
                      f"dimension), got {got}")
    return packed


def _first_bad(values: list[Any]) -> int:
    """The index of the first element that is no finite float32 (only for the error)."""
    for index, value in enumerate(values):
        try:
            if math.isfinite(value):
                struct.pack("=f", value)  # standard size: overflow is an error
                continue
        except (TypeError, OverflowError, struct.error):
            pass
        return index
    return 0
