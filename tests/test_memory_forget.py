"""memory forget and the erasure ledger, memory export by filter, and the replay of the ledger by
every restore (backup restore, verify --restore-test), against the embedded server."""

# ruff: noqa: F811  (fixtures imported from backup_fixtures are parameters here)

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backup_fixtures import (  # noqa: F401  (fixtures)
    backup_config,
    s3_bucket,
    s3_endpoint,
)
from conftest import dsn_of


def _fill(conn: psycopg.Connection[Any]) -> None:
    """Episodic memories of two agents, semantic memories of two sources."""
    conn.autocommit = True
    for i in range(12):
        agent = "alice" if i % 3 == 0 else "bob"
        conn.execute(
            "INSERT INTO episodic_memory (event_type, summary, context, tags) "
            "VALUES (%s, %s, %s::jsonb, %s)",
            ("chat", f"talk {i} with {agent}", json.dumps({"agent": agent, "turn": i}),
             ["private"] if i % 2 else ["public"]))
    for i in range(6):
        conn.execute("INSERT INTO semantic_memory (concept, content, source) VALUES (%s, %s, %s)",
                     (f"c{i}", f"fact {i}", "crm" if i < 2 else "docs"))


def _ids(conn: psycopg.Connection[Any], table: str, where: str = "TRUE") -> list[int]:
    return [r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE {where} ORDER BY id")]


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _forget(cli: Any, cfg: Path, *args: str) -> Any:
    return cli("--config", str(cfg), "memory", "forget", "--format", "json", *args)


def test_forget_dry_run_touches_nothing_then_forgets_and_records(cli, aegis_db, backup_config,
                                                                  tmp_path) -> None:
    _fill(aegis_db)
    cfg = backup_config()
    alice = _ids(aegis_db, "episodic_memory", "context->>'agent' = 'alice'")
    dry = _json(_forget(cli, cfg, "--context", "agent=alice", "--dry-run"))
    assert dry["dry_run"] and dry["ids"] == [f"episodic:{i}" for i in alice]
    assert dry["selected"] == {"episodic": 4, "semantic": 0}
    assert len(_ids(aegis_db, "episodic_memory")) == 12
    assert aegis_db.execute("SELECT count(*) FROM aegis_erasures").fetchone() == (0,)
    assert not (tmp_path / "backups" / "primary" / "erasure-ledger.json").exists()

    no_reason = _forget(cli, cfg, "--context", "agent=alice", "--yes")
    assert no_reason.exit_code == 2 and "--reason" in no_reason.stderr
    no_yes = _forget(cli, cfg, "--context", "agent=alice", "--reason", "request 1")
    assert no_yes.exit_code == 2  # not a terminal, no --yes
    nothing = _forget(cli, cfg, "--reason", "x", "--yes")
    assert nothing.exit_code == 2 and "never forgets every memory" in nothing.stderr
    assert len(_ids(aegis_db, "episodic_memory")) == 12

    texts = {i: t for i, t in aegis_db.execute("SELECT id, summary FROM episodic_memory")}
    done = _json(_forget(cli, cfg, "--context", "agent=alice", "--reason", "request 1",
                         "--yes"))
    assert done["deleted"] == {"episodic": 4, "semantic": 0}
    assert _ids(aegis_db, "episodic_memory", "context->>'agent' = 'alice'") == []
    rows = aegis_db.execute("SELECT kind, memory_id, content_sha256, reason, os_user, db_user, "
                            "erasure_id::text FROM aegis_erasures ORDER BY memory_id").fetchall()
    assert [r[1] for r in rows] == alice
    for kind, memory_id, digest, reason, os_user, db_user, erasure in rows:
        assert kind == "episodic" and reason == "request 1" and erasure == done["erasure_id"]
        assert digest == hashlib.sha256(texts[memory_id].encode()).hexdigest()
        assert os_user and db_user
    ledger = tmp_path / "backups" / "primary" / "erasure-ledger.json"
    document = json.loads(ledger.read_text())
    assert document["count"] == 4
    assert "talk" not in ledger.read_text()  # hashes, never the text
    assert oct(ledger.stat().st_mode & 0o777) == "0o600"


def test_forget_by_ids_source_and_query(cli, aegis_db, backup_config) -> None:
    _fill(aegis_db)
    cfg = backup_config()
    first = _ids(aegis_db, "episodic_memory")[0]
    crm = _ids(aegis_db, "semantic_memory", "source = 'crm'")
    done = _json(_forget(cli, cfg, f"episodic:{first}", "episodic:99999", "--reason", "r",
                         "--yes"))
    assert done["deleted"]["episodic"] == 1 and done["not_found"] == ["episodic:99999"]
    done = _json(_forget(cli, cfg, "--source", "crm", "--reason", "r", "--yes"))
    assert done["ids"] == [f"semantic:{i}" for i in crm]
    # A search picks them: keyword mode (no embedding provider), relevant enough only.
    no_score = _forget(cli, cfg, "--query", "talk 7", "--dry-run")
    assert no_score.exit_code == 2 and "--min-score" in no_score.stderr
    dry = _json(_forget(cli, cfg, "--query", "fact", "--min-score", "0.9", "--dry-run"))
    assert sorted(dry["ids"]) == sorted(f"semantic:{i}" for i in
                                        _ids(aegis_db, "semantic_memory"))
    assert aegis_db.execute("SELECT count(*) FROM aegis_erasures").fetchone() == (3,)


def test_export_matches_the_filter_exactly(cli, aegis_db, backup_config, tmp_path) -> None:
    _fill(aegis_db)
    cfg = backup_config()
    out = tmp_path / "alice.jsonl"
    done = cli("--config", str(cfg), "memory", "export", "--context", "agent=alice",
               "--tag", "public", "--output", str(out))
    assert done.exit_code == 0, done.output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    expected = _ids(aegis_db, "episodic_memory",
                    "context->>'agent' = 'alice' AND tags @> ARRAY['public']")
    assert [r["id"] for r in got] == [f"episodic:{i}" for i in expected] and expected
    assert all(r["context"]["agent"] == "alice" and "public" in r["tags"] for r in got)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".alice")]
    by_source = cli("--config", str(cfg), "memory", "export", "--source", "crm")
    assert [json.loads(x)["source"] for x in by_source.stdout.splitlines()] == ["crm", "crm"]
    by_id = cli("--config", str(cfg), "memory", "export", "--id", f"episodic:{expected[0]}")
    assert [json.loads(x)["id"] for x in by_id.stdout.splitlines()] == \
        [f"episodic:{expected[0]}"]
    # The same filter through forget --dry-run selects the same rows.
    dry = _json(_forget(cli, cfg, "--context", "agent=alice", "--tag", "public", "--dry-run"))
    assert dry["ids"] == [r["id"] for r in got]
