"""cleanup run: the HNSW rebuild and the VACUUM after the deletes say what they are doing on a
terminal (start, the pg_stat_progress_* phase as `maint` shows it, end), and nothing at all
when stderr is not a terminal (a timer, a pipe)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import yaml

from aegisctl.config import load_config
from aegisctl.retention.service import CleanupOptions, run_cleanup

POLICY = {"table": "episodic_memory", "column": "timestamp", "max_age": "6mo",
          "keep": {"importance": ["high", "critical"]}, "archive": False}
INDEX = "public.idx_episodic_embedding"


def _fill(conn: psycopg.Connection[Any], rows: int = 5000, tag: str = "e") -> None:
    """Half the rows expired, each with a 1536-d embedding (the HNSW rebuild takes a while)."""
    conn.autocommit = True
    conn.execute("INSERT INTO episodic_memory (event_type, summary, importance, embedding,"
                 " \"timestamp\")"
                 " SELECT 'task', %s || i, 'low', ARRAY(SELECT random() FROM"
                 " generate_series(1, 1536) WHERE i > 0)::vector,"
                 " now() - make_interval(days => CASE WHEN i %% 2 = 0 THEN 400 ELSE 1 END)"
                 " FROM generate_series(1, %s) i", (tag, rows))


def _config(tmp_path: Path, dsn: str | None = None) -> Path:
    data: dict[str, Any] = {
        "backup": {"directory": str(tmp_path / "backups")},
        "maintenance": {"progress_interval": "0.2s"},
        "cleanup": {"archive_dir": str(tmp_path / "archive"),
                    "policies": {"episodic": POLICY}}}
    if dsn:
        data = {"targets": {"primary": {"dsn": dsn}},
                "connection": {"retry": {"attempts": 1}}, **data}
    path = tmp_path / "aegisctl.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_rebuild_and_vacuum_report_progress(aegis_db, aegis_dsn, tmp_path) -> None:
    _fill(aegis_db)
    loaded = load_config(str(_config(tmp_path)), env={})
    lines: list[str] = []
    report = run_cleanup(loaded, "primary", aegis_db, CleanupOptions(), progress=lines.append,
                         side_connect=lambda: psycopg.connect(aegis_dsn, autocommit=True))
    policy = report.policies[0]
    assert policy.status == "done", policy.error
    assert policy.reindexed == [INDEX] and policy.vacuumed

    rebuild = f"episodic: rebuilding {INDEX} concurrently after deleting 2500 rows"
    vacuum = "episodic: VACUUM (ANALYZE) public.episodic_memory after deleting 2500 rows"
    starts = [lines.index(f"{rebuild} ..."), lines.index(f"{vacuum} ...")]
    ends = [i for i, line in enumerate(lines)
            if line.startswith((f"{rebuild}: done in ", f"{vacuum}: done in "))]
    assert len(ends) == 2
    assert starts[0] < ends[0] < starts[1] < ends[1]
    # Between the rebuild's start and end: the index build's own phases, polled as maint does.
    polled = lines[starts[0] + 1:ends[0]]
    assert polled and all(line.startswith(f"{INDEX}: index build, ") for line in polled), lines


def _run_on_a_terminal(argv: list[str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (as a person would), stdout on a pipe."""
    main, secondary = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=secondary,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(secondary)
    err = b""
    while True:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    return proc.wait(timeout=120), out, err.decode(errors="replace").replace("\r\n", "\n")


def test_shown_on_a_terminal_only(aegis_db, aegis_dsn, tmp_path) -> None:
    _fill(aegis_db)
    config = _config(tmp_path, aegis_dsn)
    argv = [sys.executable, "-m", "aegisctl", "--config", str(config), "cleanup", "run",
            "--yes", "--format", "json"]
    code, out, err = _run_on_a_terminal(argv)
    assert code == 0, err
    assert json.loads(out)["policies"][0]["reindexed"] == [INDEX]
    assert f"episodic: rebuilding {INDEX} concurrently after deleting 2500 rows ..." in err
    assert "episodic: VACUUM (ANALYZE) public.episodic_memory after deleting 2500 rows: done" \
        in err
    assert f"{INDEX}: index build, " in err

    # Under a timer (no terminal): no status lines at all, only the result on stdout.
    _fill(aegis_db, tag="again")
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["policies"][0]["reindexed"] == [INDEX]
    assert done.stderr == ""
