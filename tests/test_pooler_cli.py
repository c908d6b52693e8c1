"""Every command through a real PgBouncer: in transaction and in session mode each one either
works through the pooled dsn or stops with the one-line direct_dsn message; with direct_dsn all
of them work. Eight concurrent searches share two server connections; a cleanup run deletes
through the pooler."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from embedding_server import EmbeddingServer
from memory_fixtures import DIM, KEY_ENV, episodic, jsonl
from pooler_fixtures import (
    PgBouncer,
    clone_database,
    direct_dsn,
    drop_database,
    start_pgbouncer,
)

from aegisctl import pooler

DATABASE = "aegis_pooler_cli"

# Commands that need a session (advisory locks, pg_dump/pg_restore, VACUUM, CONCURRENTLY).
SESSION = [
    ("schema migrate",), ("schema init",), ("backup create",),
    ("maint vacuum",), ("maint analyze",),
    ("maint reindex", "--all"), ("maint vector-index", "--table", "episodic_memory"),
    ("maint partitions",), ("cleanup run", "--yes"), ("jobs run", "health"),
]
# Session work whose success needs more set-up than this module's database has (here it only
# has to stop in one line through a transaction pooler).
SESSION_REFUSED = [("schema partition", "container_metrics", "--column", "timestamp")]
# Commands that need an unpooled server (replication connections, scratch databases).
DIRECT = [
    ("backup verify", "--latest", "--restore-test"),
    ("backup restore", "--latest", "--target-db", "aegis_pooler_restored"),
    ("backup create", "--physical"), ("backup physical enable",),
    ("backup physical disable", "--yes"), ("backup wal stream",), ("backup drill", "--physical"),
]
REFUSED_AS = {"backup verify --latest --restore-test": "backup verify --restore-test",
              "jobs run health": "jobs run health",
              "backup create --physical": "backup create --physical"}
# Commands that work through any pooler (reads, memory writes in short transactions).
POOLED = [
    ("health",), ("config show",), ("schema status",), ("schema verify",), ("ext list",),
    ("ext install", "vector"), ("memory import", "{jsonl}"),
    ("memory add", "Capped billing retries at 3", "--type", "decision", "--tag", "billing"),
    ("memory search", "billing retries"), ("memory search", "billing", "--mode", "keyword"),
    ("memory search", "billing retries", "--mode", "hybrid", "--type", "decision"),
    ("memory search", "billing retries", "--explain"),
    ("memory similar", "episodic:1"), ("memory show", "episodic:1"), ("memory recent",),
    ("memory stats",), ("memory export", "--kind", "episodic"), ("memory reembed", "--missing"),
    ("diag activity",), ("diag locks",), ("diag size",), ("diag cache",), ("diag indexes",),
    ("diag slow",), ("diag vacuum",), ("diag replication",), ("diag vectors",),
    ("diag explain-search",), ("diag settings",), ("maint status",),
    ("jobs history",), ("backup list",), ("roles apply", "--dry-run"),
    ("check", "--only", "connections,wraparound,long_transactions"),
    ("memory eval", "{questions}"),
]
# Status of physical backups, not enabled here: they answer (exit 1, "not enabled") through a
# pooler exactly as over a direct connection.
STATUS = [("backup physical status",), ("backup wal status",), ("backup physical list",)]


def _argv(command: tuple[str, ...], extra: dict[str, str]) -> list[str]:
    return [*command[0].split(), *(a.format(**extra) for a in command[1:])]


@pytest.fixture(scope="module")
def bouncer(pg_server: Any, memory_template: Any) -> Iterator[PgBouncer]:
    clone_database(pg_server, memory_template.template_dbname, DATABASE)
    running = start_pgbouncer(pg_server.host, pg_server.port, pg_server.user,
                              pg_server.password, DATABASE, tx_pool_size=2)
    try:
        yield running
    finally:
        running.stop()
        drop_database(pg_server, DATABASE)


@pytest.fixture(scope="module")
def embeddings() -> Iterator[EmbeddingServer]:
    server = EmbeddingServer(dim=DIM).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def setup(bouncer: PgBouncer, embeddings: EmbeddingServer, pg_server: Any, tmp_path: Path,
          clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """A config whose target 'pooled' goes through the PgBouncer alias given."""
    monkeypatch.setenv(KEY_ENV, "sk-test-secret")
    (tmp_path / "memories.jsonl").write_text(jsonl([
        episodic("We capped billing retries at three after the payment outage",
                 event_type="decision", tags=["billing"]),
        episodic("Vacuum of the metrics table ran long on the replica")]))
    (tmp_path / "questions.jsonl").write_text(json.dumps(
        {"question": "billing retries", "relevant": ["episodic:1"]}) + "\n")

    def make(alias: str, *, direct: bool = False, **target: Any) -> Path:
        pooler.forget()
        spec: dict[str, Any] = {"dsn": bouncer.dsn(alias), **target}
        if direct:
            spec["direct_dsn"] = direct_dsn(pg_server, DATABASE)
        path = tmp_path / f"{alias}{'-direct' if direct else ''}.yaml"
        path.write_text(yaml.safe_dump({
            "targets": {"pooled": spec},
            "connection": {"retry": {"attempts": 1}},
            "schema": {"embedding_dim": DIM},
            "embedding": {"provider": "openai", "base_url": embeddings.base_url,
                          "model": "test-embed", "api_key_env": KEY_ENV, "batch_size": 16,
                          "timeout": "5s", "retries": 2, "max_retry_wait": "1s"},
            "backup": {"directory": str(tmp_path / "backups")},
            "cleanup": {"archive_dir": str(tmp_path / "archive"), "policies": {
                "metrics": {"table": "container_metrics", "column": "timestamp",
                            "max_age": "30d"}}},
            "schedule": {"health": {"command": "health", "every": "5m"}},
        }, sort_keys=False))
        return path

    return make


def _run_all(cli: Any, config: Path, commands: list[tuple[str, ...]], tmp_path: Path
             ) -> dict[str, Any]:
    extra = {"jsonl": str(tmp_path / "memories.jsonl"),
             "questions": str(tmp_path / "questions.jsonl")}
    return {" ".join(c): cli("--config", str(config), *_argv(c, extra)) for c in commands}


def _refusal(command: tuple[str, ...], mode: str) -> str:
    name = REFUSED_AS.get(" ".join(command), command[0])
    return (f"aegisctl: error: target 'pooled' goes through a {mode} pooler; set "
            f"targets.pooled.direct_dsn for {name}\n")


@pytest.mark.parametrize("alias", ["tx", "sess"])
def test_every_pooled_command_works_through_the_pooler(
        cli: Any, setup: Callable[..., Path], alias: str, tmp_path: Path) -> None:
    results = _run_all(cli, setup(alias), POOLED, tmp_path)
    failed = {c: (r.exit_code, r.stderr[-300:] or r.stdout[-600:])
              for c, r in results.items() if r.exit_code}
    assert not failed
    for command, result in _run_all(cli, setup(alias), STATUS, tmp_path).items():
        assert result.exit_code in (0, 1) and "direct_dsn" not in result.stderr, command
        assert result.stdout.strip(), command
    found = json.loads(cli("--config", str(setup(alias)), "memory", "search",
                           "billing retries", "--format", "json").stdout)
    assert "billing" in found["results"][0]["summary"]


def test_session_work_stops_in_one_line_through_a_transaction_pooler(
        cli: Any, setup: Callable[..., Path], tmp_path: Path) -> None:
    commands = SESSION + SESSION_REFUSED + DIRECT
    results = _run_all(cli, setup("tx"), commands, tmp_path)
    for command, result in zip(commands, results.values(), strict=True):
        assert (result.exit_code, result.stderr) == (2, _refusal(command, "transaction")), \
            command
        assert result.stdout == ""
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").rglob("*"))


def test_session_work_runs_through_a_session_pooler_and_replication_stops(
        cli: Any, setup: Callable[..., Path], tmp_path: Path) -> None:
    config = setup("sess")
    results = _run_all(cli, config, SESSION, tmp_path)
    failed = {c: (r.exit_code, r.stderr[-300:] or r.stdout[-600:])
              for c, r in results.items() if r.exit_code}
    assert not failed
    for command, result in zip(DIRECT, _run_all(cli, config, DIRECT, tmp_path).values(),
                               strict=True):
        assert (result.exit_code, result.stderr) == (2, _refusal(command, "session")), command


def test_with_direct_dsn_session_work_runs_and_the_rest_stays_pooled(
        cli: Any, setup: Callable[..., Path], tmp_path: Path, pg_server: Any) -> None:
    config = setup("tx", direct=True)
    results = _run_all(cli, config, SESSION + DIRECT[:2], tmp_path)
    failed = {c: (r.exit_code, r.stderr[-300:] or r.stdout[-600:])
              for c, r in results.items() if r.exit_code}
    assert not failed
    text = config.read_text().replace("postgresql://postgres@", "postgresql://postgres:s3cret@")
    config.write_text(text)
    shown = cli("--config", str(config), "config", "show", "--format", "json")
    rows = {k: v["value"] for k, v in json.loads(shown.stdout)["values"].items()}
    assert rows["targets.pooled.direct_dsn"].startswith("postgresql://postgres:***@/")
    assert rows["targets.pooled.dsn"].startswith("postgresql://postgres:***@127.0.0.1:")
    assert rows["targets.pooled.pooler"] == "auto"
    assert "s3cret" not in shown.stdout
    drop_database(pg_server, "aegis_pooler_restored")


def _served(bouncer: PgBouncer, alias: str) -> int:
    """Transactions PgBouncer has served for a database alias so far."""
    with bouncer.admin() as admin:
        cur = admin.execute("SHOW STATS")
        names = [d.name for d in cur.description or []]
        for row in cur.fetchall():
            stats = dict(zip(names, row, strict=True))
            if stats["database"] == alias:
                return int(stats["total_xact_count"])
    return 0


def test_cleanup_run_deletes_through_the_pooler(
        cli: Any, setup: Callable[..., Path], pg_server: Any, bouncer: PgBouncer) -> None:
    with psycopg.connect(direct_dsn(pg_server, DATABASE), autocommit=True) as conn:
        conn.execute("DELETE FROM container_metrics")
        conn.execute(
            "INSERT INTO container_metrics (container_name, cpu_percent, \"timestamp\")"
            " SELECT 'c' || (i % 7), 1, now() - make_interval(days => i % 60)"
            "   FROM generate_series(1, 3000) i")
        before = _served(bouncer, "tx")
        result = cli("--config", str(setup("tx", direct=True)), "cleanup", "run", "--yes",
                     "--format", "json")
        assert result.exit_code == 0, result.stderr
        policy = json.loads(result.stdout)["policies"][0]
        assert policy["deleted_rows"] > 1000 and policy["vacuumed"] is True
        row = conn.execute("SELECT count(*) FILTER (WHERE \"timestamp\" < now() - "
                           "interval '30 days'), count(*) FROM container_metrics").fetchone()
        assert row == (0, 3000 - policy["deleted_rows"])
        # The batches went through PgBouncer's transaction pool.
        assert _served(bouncer, "tx") - before >= policy["batches"]


def test_eight_concurrent_searches_share_two_server_connections(
        setup: Callable[..., Path], bouncer: PgBouncer, cli: Any, tmp_path: Path) -> None:
    config = setup("tx")
    assert cli("--config", str(config), "memory", "import",
               str(tmp_path / "memories.jsonl")).exit_code == 0
    env = {k: v for k, v in __import__("os").environ.items()
           if not k.startswith(("AEGISCTL_", "PG"))}
    searches = [subprocess.Popen(
        [sys.executable, "-m", "aegisctl", "--config", str(config), "memory", "search",
         "billing retries", "--format", "json"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env) for _ in range(8)]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in searches]
    for code, out, err in outcomes:
        assert code == 0, err
        assert "billing" in json.loads(out)["results"][0]["summary"]
    with bouncer.admin() as admin:
        cur = admin.execute("SHOW POOLS")
        names = [d.name for d in cur.description or []]
        pools = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    tx = next(p for p in pools if p["database"] == "tx")
    assert tx["sv_active"] + tx["sv_idle"] + tx["sv_used"] + tx["sv_tested"] \
        + tx["sv_login"] <= 2
