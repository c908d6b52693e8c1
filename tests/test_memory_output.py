"""The memory commands on the one output contract: inert data, ids whole at 80 columns, JSON
everywhere, a quiet end on a closed pipe, one confirmation."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

from memory_fixtures import episodic, jsonl

HOSTILE = "[bold]x[/] title\x1b]0;pwned\x07 clear\x1b[2J end \x9b31m"


def _import(cli: Any, config: Path, tmp_path: Path, records: list[dict[str, Any]]) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl(records))
    result = cli("--config", str(config), "memory", "import", str(path))
    assert result.exit_code == 0, result.output


def _run_in_terminal(args: list[str], answer: bytes | None = None, columns: int = 80,
                     timeout: float = 60) -> tuple[int, str]:
    """Run aegisctl with a terminal (80 columns) as stdin, stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["NO_COLOR"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "aegisctl", *args], stdin=slave,
                            stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline, answered = [], time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
            if answer is not None and not answered and b"?" in b"".join(chunks):
                os.write(master, answer)
                answered = True
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=10)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_markup_and_escape_sequences_in_memory_text_are_printed_inert(
        cli, make_config, tmp_path, memory_db) -> None:
    config = make_config(embedding={"provider": "none"})
    _import(cli, config, tmp_path, [episodic(HOSTILE, tags=["[red]tag[/red]"])])
    for args in (["memory", "recent", "-f", "table"],
                 ["memory", "show", "episodic:1", "-f", "table"],
                 ["memory", "search", "title clear", "--mode", "keyword", "-f", "table"]):
        result = cli("--config", str(config), *args)
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "[bold]x[/]" in out, out  # markup shown, not interpreted
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
        assert "\\x1b]0;pwned\\x07" in out or "\\x1b" in out
    body = json.loads(cli("--config", str(config), "memory", "show", "episodic:1",
                          "-f", "json").stdout)
    assert body["summary"] == HOSTILE  # JSON keeps the data exactly, escaped
    raw = cli("--config", str(config), "memory", "export").stdout
    assert "\x1b" not in raw and "\x9b" not in raw
    assert json.loads(raw.splitlines()[0])["summary"] == HOSTILE


def test_ids_are_whole_and_text_wraps_at_80_columns(cli, make_config, tmp_path, memory_db,
                                                    clean_env) -> None:
    config = make_config(embedding={"provider": "none"})
    memory_db.execute("SELECT setval('episodic_memory_id_seq', 2000000000)")
    memory_db.commit()
    long_text = "a rather long memory about billing retries " * 6
    _import(cli, config, tmp_path, [episodic(f"{long_text} {i}", event_type="decision")
                                    for i in range(3)])
    for args in (["memory", "recent"], ["memory", "search", "billing", "--mode", "keyword"]):
        code, screen = _run_in_terminal(["--config", str(config), *args])
        assert code == 0, screen
        for i in (1, 2, 3):
            assert f"episodic:200000000{i}" in screen, screen
        plain = re.sub(r"\x1b\[[0-9;]*m", "", screen)  # the header's bold
        too_wide = [line for line in plain.splitlines() if len(line) > 80]
        assert not too_wide, [len(line) for line in too_wide]
        assert "episodic:…" not in screen and "episodic:2000…" not in screen


def test_export_into_a_closed_pipe_ends_quietly(make_config, tmp_path, memory_db, cli) -> None:
    config = make_config(embedding={"provider": "none"})
    _import(cli, config, tmp_path, [episodic(f"memory number {i} " + "z" * 200)
                                    for i in range(3000)])
    proc = subprocess.Popen([sys.executable, "-m", "aegisctl", "--config", str(config),
                             "memory", "export"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    head = [proc.stdout.readline() for _ in range(3)]
    proc.stdout.close()  # like `| head -3`
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert all(json.loads(line)["kind"] == "episodic" for line in head)
    assert code == 0 and stderr == "", stderr
    # And through a real shell pipeline.
    shell = subprocess.run(
        f"'{sys.executable}' -m aegisctl --config '{config}' memory export | head -3",
        shell=True, capture_output=True, text=True, timeout=60)
    assert len(shell.stdout.splitlines()) == 3 and shell.stderr == "", shell.stderr


def test_export_speaks_json_when_asked(cli, make_config, tmp_path, memory_db) -> None:
    config = make_config(embedding={"provider": "none"})
    _import(cli, config, tmp_path, [episodic("one"), episodic("two")])
    for args in (["memory", "export", "--format", "json"],
                 ["--format", "json", "memory", "export"]):
        body = json.loads(cli("--config", str(config), *args).stdout)
        assert body["count"] == 2 and [m["summary"] for m in body["memories"]] == ["one", "two"]
    out = tmp_path / "out.json"
    result = cli("--config", str(config), "--format", "json", "memory", "export", "-o", str(out))
    assert json.loads(out.read_text())["count"] == 2
    assert json.loads(result.stdout)["exported"] == 2


def test_every_memory_command_answers_json(cli, make_config, tmp_path, memory_db) -> None:
    config = make_config()
    _import(cli, config, tmp_path, [episodic("billing retries"), episodic("deploy failed")])
    for args in (["memory", "recent"], ["memory", "stats"], ["memory", "show", "episodic:1"],
                 ["memory", "similar", "episodic:1"], ["memory", "search", "billing"],
                 ["memory", "add", "a new one"], ["memory", "reembed", "--missing"],
                 ["memory", "reembed", "--dry-run"]):
        result = cli("--config", str(config), "--format", "json", *args)
        assert result.exit_code == 0, (args, result.output)
        json.loads(result.stdout)


def test_reembed_no_at_the_prompt_exits_1_and_changes_nothing(
        make_config, tmp_path, memory_db, cli) -> None:
    config = make_config()
    _import(cli, config, tmp_path, [episodic("billing retries")])
    memory_db.rollback()
    before = memory_db.execute("SELECT embedding::text FROM episodic_memory").fetchone()
    code, screen = _run_in_terminal(["--config", str(config), "memory", "reembed"],
                                    answer=b"n\n")
    assert code == 1, screen
    assert "nothing was changed" in screen
    memory_db.rollback()
    assert memory_db.execute("SELECT embedding::text FROM episodic_memory").fetchone() == before
    dry = cli("--config", str(config), "memory", "reembed", "--dry-run", "-f", "table")
    assert dry.exit_code == 0 and "would embed 1 memories (all)" in dry.stdout



def test_an_explicit_global_format_table_is_a_table_in_a_pipe(cli, make_config, tmp_path,
                                                               memory_db) -> None:
    """Into a pipe memory commands default to JSON lines, but `--format table` given before
    the command means a table, like everywhere else."""
    config = make_config(embedding={"provider": "none"})
    _import(cli, config, tmp_path, [episodic("the pipe format memory")])
    piped = cli("--config", str(config), "memory", "recent")
    assert json.loads(piped.stdout.splitlines()[0])["summary"] == "the pipe format memory"
    table = cli("--config", str(config), "--format", "table", "memory", "recent")
    assert table.exit_code == 0, table.output
    assert "episodic:1" in table.stdout and not table.stdout.lstrip().startswith("{")
