"""Hostile or mistaken input gets one line and the right exit code: YAML alias bombs, an
embedding dimension outside the one supported range, malformed DSNs, --debug keeping the exit
code, and the database's recorded dimension as the truth when the config is silent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aegisctl.config import ConfigError, parse_yaml

ROOT = Path(__file__).parent.parent
MAX_EMBEDDING_DIM = 4000  # the documented range is 1 to 4000


def _alias_bomb(levels: int) -> str:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    previous = "a"
    for level in range(levels):
        name = f"l{level}"
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


def _aegisctl(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AEGISCTL_", "PG"))}
    return subprocess.run([sys.executable, "-m", "aegisctl", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or ROOT,
                          env={**base, "NO_COLOR": "1", **(env or {})})


def test_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """Eight levels of nine aliases expand to 387 million values: today config validate walks
    them for minutes. A subprocess with a timeout, so a regression fails instead of hanging."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(8))
    done = _aegisctl("config", "validate", str(bomb), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "expands to more than" in done.stderr
    assert "unexpected" not in done.stderr
    # Every command reads the same file the same way.
    done = _aegisctl("--config", str(bomb), "config", "show", timeout=60)
    assert done.returncode == 2 and "expands to more than" in done.stderr


def test_recursive_alias_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "recursive.yaml"
    path.write_text("schema:\n  extensions: &e [vector, *e]\n")
    done = _aegisctl("config", "validate", str(path))
    assert done.returncode == 2, done.stderr
    assert "refers to its own anchor" in done.stderr


def test_ordinary_anchors_still_work() -> None:
    text = ("connection:\n  timeouts:\n    query: &t {statement_timeout: 5s, lock_timeout: 1s}\n"
            "    ddl: *t\n")
    data, lines = parse_yaml(text, "x.yaml")
    assert data["connection"]["timeouts"]["ddl"] == {"statement_timeout": "5s",
                                                      "lock_timeout": "1s"}
    assert lines["connection.timeouts.ddl"] == 4
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_yaml(_alias_bomb(4), "x.yaml")


@pytest.mark.parametrize("dim", [MAX_EMBEDDING_DIM + 1, 16000, 0])
def test_embedding_dim_has_one_range(cli, write_config, dim: int) -> None:
    """The config used to accept 1..16000 while schema init refused above 4000."""
    path = write_config({"schema": {"embedding_dim": dim}})
    result = cli("config", "validate", str(path))
    assert result.exit_code == 2, result.output
    assert f"embedding dimension {dim} is out of range" in result.stderr
    path = write_config({"embedding": {"dimensions": dim}})
    result = cli("config", "validate", str(path))
    assert result.exit_code == 2 and "embedding.dimensions" in result.stderr


def test_embedding_dim_range_same_for_schema_init(cli, db_config) -> None:
    result = cli("--config", str(db_config), "schema", "init", "--embedding-dim",
                 str(MAX_EMBEDDING_DIM + 1))
    assert result.exit_code == 2
    assert f"embedding dimension {MAX_EMBEDDING_DIM + 1} is out of range" in result.stderr


@pytest.mark.parametrize("dsn", ["port=notaport", "host=/tmp port=99999", "sslmode=bogus",
                                 "host=localhost nonsense", "postgresql://u:s3cret@/db?port=x"])
def test_malformed_dsn_is_a_usage_error(cli, write_config, dsn: str) -> None:
    path = write_config({"targets": {"primary": {"dsn": dsn}},
                         "connection": {"retry": {"attempts": 1}}})
    result = cli("--config", str(path), "health")
    assert result.exit_code == 2, result.output
    assert "invalid DSN" in result.stderr and "s3cret" not in result.stderr


def test_debug_keeps_the_exit_code(cli, write_config) -> None:
    """--debug adds the traceback; it used to turn exit 3 (unreachable) into 1."""
    path = write_config({"targets": {"primary": {"dsn": "postgresql://u@127.0.0.1:1/db"}},
                         "connection": {"retry": {"attempts": 1}}})
    plain = cli("--config", str(path), "health")
    assert plain.exit_code == 3 and "Traceback" not in plain.stderr
    debug = cli("--config", str(path), "--debug", "health")
    assert debug.exit_code == 3, debug.output
    assert "Traceback" in debug.stderr and "ConnectionFailed" in debug.stderr
    bad = write_config({"targets": {"primary": {"dsn": "port=notaport"}}}, name="bad.yaml")
    assert cli("--config", str(bad), "--debug", "health").exit_code == 2


def test_database_dimension_is_the_truth_when_config_is_silent(cli, db_config) -> None:
    """The README's advice for the local model: `schema init --embedding-dim 256`. Later
    commands with a config that does not name a dimension used to fail with a mismatch."""
    config = ("--config", str(db_config))
    init = cli(*config, "schema", "init", "--embedding-dim", "256")
    assert init.exit_code == 0, init.output
    for args in (("schema", "init"), ("schema", "migrate"), ("schema", "migrate", "--dry-run")):
        result = cli(*config, *args, "--format", "json")
        assert result.exit_code == 0, (args, result.output)
        payload = json.loads(result.stdout)
        migration = payload.get("migration", payload)
        assert migration["embedding_dim"] == 256, args
    status = json.loads(cli(*config, "schema", "status", "--format", "json").stdout)
    assert status["embedding_dim"] == 256
    # A config that does name a dimension is still checked against the database's.
    explicit = db_config.with_name("explicit.yaml")
    explicit.write_text(db_config.read_text() + "schema:\n  embedding_dim: 1536\n")
    clash = cli("--config", str(explicit), "schema", "migrate")
    assert clash.exit_code == 2 and "stores 256-dimension embeddings" in clash.stderr
