"""Hostile input to the memory commands: one clear line and the right exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psycopg
from memory_fixtures import episodic, jsonl


def _count(conn: psycopg.Connection[Any]) -> int:
    conn.rollback()
    row = conn.execute("SELECT count(*) FROM episodic_memory").fetchone()
    assert row is not None
    return int(row[0])


def _no_crash(result: Any) -> None:
    assert "unexpected" not in result.output and "Traceback" not in result.output


def test_empty_or_blank_search_is_a_usage_error(cli, make_config, memory_db) -> None:
    config = make_config()
    cli("--config", str(config), "memory", "add", "billing retries capped at 3")
    for query in ("", "   ", "\t\n"):
        for fmt in ("json", "table"):
            result = cli("--config", str(config), "memory", "search", query, "-f", fmt)
            assert result.exit_code == 2, (query, result.output)
            assert "query is empty" in result.stderr
            assert result.stdout == ""  # never a NaN similarity, never a half document
            _no_crash(result)


def test_add_with_empty_text_is_one_usage_line(cli, make_config, memory_db) -> None:
    config = make_config()
    for kind in ("episodic", "semantic"):
        result = cli("--config", str(config), "memory", "add", "", "--kind", kind)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines()[0] == (
            "aegisctl: error: the memory's text is empty: give the words to remember")
        _no_crash(result)
    assert _count(memory_db) == 0


def test_lines_of_invalid_utf8_are_bad_lines(cli, make_config, tmp_path, memory_db) -> None:
    config = make_config(embedding={"provider": "none"})
    path = tmp_path / "latin1.jsonl"
    good = jsonl([episodic("first"), episodic("third")]).encode().splitlines()
    path.write_bytes(good[0] + b"\n" + '{"kind": "episodic", "event_type": "n", "summary": '
                     '"caf\xe9"}'.encode("latin-1") + b"\n" + good[1] + b"\n")
    result = cli("--config", str(config), "memory", "import", str(path))
    assert result.exit_code == 1 and "line 2: not valid UTF-8" in result.stderr
    _no_crash(result)
    assert _count(memory_db) == 0
    result = cli("--config", str(config), "memory", "import", str(path), "--skip-bad",
                 "-f", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["inserted"]["episodic"] == 2
    assert [b["line"] for b in body["bad_lines"]] == [2]


def test_a_utf8_bom_at_the_start_is_skipped(cli, make_config, tmp_path, memory_db) -> None:
    config = make_config(embedding={"provider": "none"})
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl([episodic("one"), episodic("two")]).encode())
    result = cli("--config", str(config), "memory", "import", str(path), "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inserted"]["episodic"] == 2


def test_confidence_outside_0_1_is_a_bad_line(cli, make_config, tmp_path, memory_db) -> None:
    config = make_config(embedding={"provider": "none"})
    path = tmp_path / "conf.jsonl"
    path.write_text("\n".join(json.dumps({"kind": "semantic", "concept": "c", "content": f"t{c}",
                                          "confidence": c}) for c in (0, 1, 0.5, 7, -0.1)))
    result = cli("--config", str(config), "memory", "import", str(path))
    assert result.exit_code == 1
    assert "line 4: confidence: 7 is outside 0..1" in result.stderr
    assert "line 5: confidence: -0.1 is outside 0..1" in result.stderr


def test_skip_bad_with_every_line_bad_fails(cli, make_config, tmp_path, memory_db) -> None:
    config = make_config(embedding={"provider": "none"})
    path = tmp_path / "bad.jsonl"
    path.write_text('{"kind": "nope"}\n[1, 2]\n\n{broken\n')
    result = cli("--config", str(config), "memory", "import", str(path), "--skip-bad")
    assert result.exit_code == 1, result.output
    assert "every line is bad (3)" in result.stderr
    _no_crash(result)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert cli("--config", str(config), "memory", "import", str(empty),
               "--skip-bad").exit_code == 0


def test_line_size_limit_is_configurable(cli, make_config, tmp_path, memory_db) -> None:
    config = make_config(embedding={"provider": "none"}, memory={"max_line_bytes": "1kB"})
    path = tmp_path / "long.jsonl"
    path.write_text(jsonl([episodic("short"), episodic("x" * 2000), episodic("also short")]))
    result = cli("--config", str(config), "memory", "import", str(path), "--skip-bad",
                 "-f", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["inserted"]["episodic"] == 2
    assert body["bad_lines"][0]["line"] == 2
    assert "longer than memory.max_line_bytes (1000 bytes" in body["bad_lines"][0]["error"]
    bad = make_config(memory={"max_line_bytes": 0})
    assert cli("--config", str(bad), "memory", "stats").exit_code == 2


def test_a_50mb_line_is_a_bad_line_read_in_bounded_memory(make_config, tmp_path, memory_db,
                                                          clean_env) -> None:
    config = make_config(embedding={"provider": "none"})
    path = tmp_path / "huge.jsonl"
    with path.open("w") as handle:
        handle.write(jsonl([episodic("before")]))
        handle.write('{"kind": "episodic", "event_type": "n", "summary": "')
        chunk = "y" * (1024 * 1024)
        for _ in range(50):
            handle.write(chunk)
        handle.write('"}\n')
        handle.write(jsonl([episodic("after")]))
    # The child's peak memory, measured by a parent that waits for it alone.
    measure = ("import resource, subprocess, sys; "
               "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(done.returncode); print(done.stdout); print(done.stderr, file=sys.stderr); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    run = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "aegisctl",
                          "--config", str(config), "memory", "import", str(path), "--skip-bad",
                          "-f", "json"], capture_output=True, text=True, timeout=300)
    lines = run.stdout.strip().splitlines()
    code, peak_kb = int(lines[0]), int(lines[-1])
    assert code == 0, run.stderr
    body = json.loads("\n".join(lines[1:-1]))
    assert body["inserted"]["episodic"] == 2
    assert body["bad_lines"][0]["line"] == 2
    assert "longer than memory.max_line_bytes" in body["bad_lines"][0]["error"]
    assert peak_kb < 300 * 1024, f"peak RSS {peak_kb // 1024} MB for a 50 MB line"
    assert "unexpected" not in run.stderr


def test_stdin_import_is_validated_whole_first(cli, make_config, memory_db) -> None:
    config = make_config(embedding={"provider": "none"})
    text = jsonl([episodic("a"), episodic("b")]) + "{bad\n"
    result = cli("--config", str(config), "memory", "import", "-", input=text)
    assert result.exit_code == 1 and "line 3: invalid JSON" in result.stderr
    assert _count(memory_db) == 0



def test_arguments_that_are_not_utf8_are_one_usage_line(make_config, memory_db) -> None:
    """Bytes that are not UTF-8 in argv (a script in Latin-1, binary junk) reach Python as
    surrogate escapes; they must give one line and exit 2, and store nothing."""
    config = make_config()
    for args in ([b"memory", b"search", b"\xff\xfe billing"],
                 [b"memory", b"add", b"caf\xe9 ol\xe9"]):
        run = subprocess.run([sys.executable.encode(), b"-m", b"aegisctl", b"--config",
                              str(config).encode(), *args], capture_output=True, timeout=120)
        stderr = run.stderr.decode("utf-8", "replace")
        assert run.returncode == 2, stderr
        assert "is not valid UTF-8" in stderr and ("\\xff" in stderr or "\\xe9" in stderr)
        assert len(stderr.strip().splitlines()) == 1 and "unexpected" not in stderr
    assert _count(memory_db) == 0


def test_a_pasted_page_as_query_is_searched_not_an_error(cli, make_config, memory_db) -> None:
    """Thousands of distinct words: the keyword side ranks by the first MAX_QUERY_TERMS terms
    (PostgreSQL caps a statement at 1664 output columns) and skips the trigram top-up."""
    config = make_config(embedding={"provider": "none"})
    cli("--config", str(config), "memory", "add", "billing retries capped at 3")
    page = "billing retries " + " ".join(f"w{n}x" for n in range(3000))
    result = cli("--config", str(config), "memory", "search", page, "-f", "json")
    assert result.exit_code == 0, result.output
    _no_crash(result)
    hits = json.loads(result.stdout)["results"]
    assert [h["summary"] for h in hits] == ["billing retries capped at 3"]
