"""memory import parses the file once: the validation pass keeps the checked rows (vectors as
float32) for the writing pass. What a user relies on: a bad embedding is still reported by line
number with nothing written, vectors arrive exactly, and a full temporary folder does not lose
a file import (it is read again) nor half-write a piped one."""

from __future__ import annotations

import errno
import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from conftest import dsn_of
from memory_fixtures import DIM, episodic, jsonl

import aegisctl.memory.ingest as ingest
from aegisctl.errors import OperationFailed

MAX_LINE = 16 * 1024 * 1024


def _count(conn: psycopg.Connection[Any]) -> int:
    conn.rollback()
    row = conn.execute("SELECT count(*) FROM episodic_memory").fetchone()
    assert row is not None
    return int(row[0])


def _vector(i: int) -> list[float]:
    return [((i * 31 + d) % 17 - 8) / 8 for d in range(DIM)]


def _rows(n: int) -> list[dict[str, Any]]:
    return [episodic(f"note {i} about retries", embedding=_vector(i)) for i in range(n)]


def _import(dsn: str, stream: IO[bytes], skip_bad: bool = False) -> ingest.ImportResult:
    """The import as the command runs it: two writers and a lookup connection."""
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(ingest.WRITERS + 1)]
    try:
        return ingest.import_stream(conns[1:], conns[0], stream, DIM, None,
                                    max_line_bytes=MAX_LINE, skip_bad=skip_bad)
    finally:
        for conn in conns:
            conn.close()


ELEMENT_3 = "embedding: element 3 is not a finite number within float32 range"
WRONG_SIZE = f"embedding: expected {DIM} finite numbers (the database's dimension), got"


@pytest.mark.parametrize(("embedding", "error"), [
    ([0.5, 0.5, 1e39] + [0.5] * (DIM - 3), ELEMENT_3),  # float32 overflow
    ([0.5, 0.5, "0.5"] + [0.5] * (DIM - 3), ELEMENT_3),
    ([0.5, 0.5, [0.5]] + [0.5] * (DIM - 3), ELEMENT_3),
    ([0.5, 0.5, None] + [0.5] * (DIM - 3), ELEMENT_3),
    ([0.5] * (DIM - 1), f"{WRONG_SIZE} {DIM - 1}"),
    ({"values": [0.5] * DIM}, f"{WRONG_SIZE} dict"),
])
def test_a_bad_embedding_deep_in_the_file_is_reported_by_line_and_nothing_is_written(
        cli, make_config, tmp_path: Path, memory_db, embedding: Any, error: str) -> None:
    config = make_config(embedding={"provider": "none"})
    records = _rows(2 * ingest.SPOOL_BATCH + 3)
    records.insert(ingest.SPOOL_BATCH + 7, episodic("the bad one", embedding=embedding))
    path = tmp_path / "bad.jsonl"
    path.write_text(jsonl(records))
    failed = cli("--config", str(config), "memory", "import", str(path))
    assert failed.exit_code == 1
    line = ingest.SPOOL_BATCH + 8
    assert f"line {line}: {error}" in " ".join(failed.stderr.split())
    assert "nothing was imported" in failed.stderr
    assert _count(memory_db) == 0
    skipped = cli("--config", str(config), "memory", "import", str(path), "--skip-bad",
                  "-f", "json")
    assert skipped.exit_code == 0, skipped.output
    body = json.loads(skipped.stdout)
    assert [b["line"] for b in body["bad_lines"]] == [line]
    assert body["inserted"]["episodic"] == len(records) - 1 == _count(memory_db)


def test_vectors_arrive_exactly_as_float32(cli, make_config, tmp_path: Path,
                                           memory_db) -> None:
    edge = [3.4028234e38, -3.4028234e38, 1e-45, -0.0, 0.1, 1, True, -7.25]
    vector = (edge * DIM)[:DIM]
    path = tmp_path / "exact.jsonl"
    path.write_text(jsonl([episodic("exact", embedding=vector)]))
    config = make_config(embedding={"provider": "none"})
    assert cli("--config", str(config), "memory", "import", str(path)).exit_code == 0
    memory_db.rollback()
    # float4 in binary: each value exactly as stored.
    row = memory_db.cursor(binary=True).execute(
        "SELECT embedding::real[] FROM episodic_memory").fetchone()
    assert row is not None
    expected = list(struct.unpack(f"{DIM}f", struct.pack(f"{DIM}f", *vector)))
    assert row[0] == expected


def test_the_file_is_parsed_once(tmp_path: Path, memory_db,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    parse = ingest.parse_line

    def counted(text: str, dim: int) -> Any:
        calls.append(1)
        return parse(text, dim)

    monkeypatch.setattr(ingest, "parse_line", counted)
    n = 3 * ingest.CHUNK_ROWS + 5
    path = tmp_path / "once.jsonl"
    path.write_text(jsonl(_rows(n)))
    with path.open("rb") as stream:
        result = _import(dsn_of(memory_db), stream)
    assert result.total_inserted == n == _count(memory_db)
    assert len(calls) == n


class _FullDisk(io.BytesIO):
    """A temporary file on a full file system."""

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_temporary_folder_reads_a_file_again(tmp_path: Path, memory_db,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "_spool_file", _FullDisk)
    n = ingest.CHUNK_ROWS + 9
    path = tmp_path / "again.jsonl"
    path.write_text(jsonl(_rows(n)))
    with path.open("rb") as stream:
        result = _import(dsn_of(memory_db), stream)
    assert result.total_inserted == n == _count(memory_db)


def test_a_full_temporary_folder_stops_a_piped_import_before_writing(
        memory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "_spool_file", _FullDisk)

    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    with pytest.raises(OperationFailed, match=r"temporary file.*nothing was imported"):
        _import(dsn_of(memory_db), Pipe(jsonl(_rows(40)).encode()))
    assert _count(memory_db) == 0


def test_a_real_pipe_is_imported(make_config, memory_db, clean_env) -> None:
    config = make_config(embedding={"provider": "none"})
    n = ingest.CHUNK_ROWS + 3
    data = jsonl(_rows(n)) + "\n"  # a blank last line is not a record
    done = subprocess.run([sys.executable, "-m", "aegisctl", "--config", str(config), "memory",
                           "import", "-", "-f", "json"], input=data, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inserted"]["episodic"] == n == _count(memory_db)
