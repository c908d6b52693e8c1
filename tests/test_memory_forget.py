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
    # A table alone narrows nothing: every episodic memory is "everything" too.
    whole_kind = _forget(cli, cfg, "--kind", "episodic", "--reason", "x", "--yes")
    assert whole_kind.exit_code == 2 and "--all" in whole_kind.stderr
    both = _forget(cli, cfg, "--all", "--context", "agent=alice", "--dry-run")
    assert both.exit_code == 2 and "--all" in both.stderr
    everything = _json(_forget(cli, cfg, "--kind", "episodic", "--all", "--dry-run"))
    assert everything["selected"] == {"episodic": 12, "semantic": 0}
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


def _create(cli: Any, cfg: Path) -> str:
    made = cli("--config", str(cfg), "backup", "create", "--format", "json")
    assert made.exit_code == 0, made.output
    return str(json.loads(made.stdout)["id"])


def _restore_into(cli: Any, cfg: Path, backup: str, database: str) -> Any:
    return cli("--config", str(cfg), "backup", "restore", backup, "--target-db", database,
               "--format", "json")


def test_restore_and_restore_test_replay_the_ledger(cli, aegis_db, backup_config, s3_endpoint,
                                                    s3_bucket, tmp_path) -> None:
    """forget -> a backup taken before -> restore: the forgotten rows are gone and the
    restore says so, through the copy beside the backups and the (encrypted) remote copy,
    not the restored database's own ledger, which predates the erasure."""
    _fill(aegis_db)
    key = tmp_path / "backup.key"
    assert cli("backup", "key-generate", str(key)).exit_code == 0
    cfg = backup_config(encryption={"key_file": str(key)}, remote={
        "endpoint_url": s3_endpoint, "bucket": s3_bucket, "prefix": "p/",
        "region": "us-east-1", "server_side_encryption": "AES256"})
    before = _create(cli, cfg)
    alice = _ids(aegis_db, "episodic_memory", "context->>'agent' = 'alice'")
    crm = _ids(aegis_db, "semantic_memory", "source = 'crm'")
    for args in (["--context", "agent=alice"], ["--source", "crm"]):
        _json(_forget(cli, cfg, *args, "--reason", "erasure request", "--yes"))
    after = _create(cli, cfg)

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    remote = s3.get_object(Bucket=s3_bucket, Key="p/primary/erasure-ledger.json.enc")
    assert remote["Body"].read().startswith(b"AEGISBK1")  # encrypted like the backups
    assert remote["ServerSideEncryption"] == "AES256"

    # The live database loses its ledger rows and the local copy goes: only the remote is left.
    aegis_db.execute("TRUNCATE aegis_erasures")
    (tmp_path / "backups" / "primary" / "erasure-ledger.json").unlink()
    database = f"restored_{os.getpid()}"
    try:
        done = _json(_restore_into(cli, cfg, before, database))
        assert done["erasures"]["rows_removed"] == 6
        assert done["erasures"]["removed"] == {"episodic": 4, "semantic": 2}
        with psycopg.connect(dsn_of(aegis_db, database)) as restored:
            assert not set(alice) & set(_ids(restored, "episodic_memory"))
            assert not set(crm) & set(_ids(restored, "semantic_memory"))
            assert len(_ids(restored, "episodic_memory")) == 8
            # The restored ledger is complete again, and an erased id is not handed out again.
            assert restored.execute("SELECT count(*) FROM aegis_erasures").fetchone() == (6,)
            seq = restored.execute("SELECT last_value FROM episodic_memory_id_seq").fetchone()
            assert seq is not None and seq[0] >= max(alice)
        aegis_db.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        # The table output says it too; a backup taken after the erasure has nothing to redo.
        told = cli("--config", str(cfg), "backup", "restore", before, "--target-db", database)
        assert told.exit_code == 0, told.output
        assert "6 forgotten row(s) removed again" in told.stdout
        aegis_db.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        later = _json(_restore_into(cli, cfg, after, database))
        assert later["erasures"]["rows_removed"] == 0
        assert later["erasures"]["entries_replayed"] == 0
    finally:
        aegis_db.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    verify = cli("--config", str(cfg), "backup", "verify", before, "--restore-test",
                 "--format", "json")
    report = _json(verify)
    assert report["ok"] and report["erasures"]["rows_removed"] == 6
    assert any("6 forgotten row(s) removed again" in c for c in report["checks"])


def test_corrupt_ledger_fails_the_restore_in_one_line(cli, aegis_db, backup_config,
                                                       tmp_path) -> None:
    _fill(aegis_db)
    cfg = backup_config()
    backup = _create(cli, cfg)
    _json(_forget(cli, cfg, "--source", "crm", "--reason", "r", "--yes"))
    path = tmp_path / "backups" / "primary" / "erasure-ledger.json"
    document = json.loads(path.read_text())
    document["entries"][0]["memory_id"] = "1 OR TRUE"
    path.write_text(json.dumps(document))
    database = f"never_{os.getpid()}"
    for command in (["restore", backup, "--target-db", database],
                    ["verify", backup, "--restore-test"]):
        refused = cli("--config", str(cfg), "backup", *command)
        assert refused.exit_code == 1, refused.output
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "erasure ledger" in refused.stderr and "memory_id" in refused.stderr
    assert aegis_db.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (database,)).fetchone() == (0,)
    listed = cli("--config", str(cfg), "backup", "list", "--format", "json")
    assert json.loads(listed.stdout)["backups"][0]["verified"] == "ok"  # not blamed
    # A forget meanwhile works, warns, and never overwrites the damaged copy (it may hold more).
    damaged = path.read_bytes()
    more = _forget(cli, cfg, "--context", "agent=alice", "--reason", "r", "--yes")
    assert more.exit_code == 0, more.output
    assert "local copy not written" in more.stderr and path.read_bytes() == damaged
    path.write_text("{not json")
    assert cli("--config", str(cfg), "backup", "restore", backup, "--target-db", database
               ).exit_code == 1


def test_check_reports_backups_holding_forgotten_rows(cli, aegis_db, backup_config) -> None:
    _fill(aegis_db)
    cfg = backup_config()

    def check() -> dict[str, Any]:
        ran = cli("--config", str(cfg), "check", "--only", "erased_rows_in_backups",
                  "--format", "json")
        found = {c["name"]: c for c in json.loads(ran.stdout)["targets"][0]["checks"]}
        return dict(found["erased_rows_in_backups"])

    backup = _create(cli, cfg)
    assert check()["status"] == "UNKNOWN"  # skipped: nothing forgotten yet
    _json(_forget(cli, cfg, "--source", "crm", "--reason", "r", "--yes"))
    ok = check()
    assert ok["status"] == "OK" and "until" in ok["message"]
    assert cli("--config", str(cfg), "backup", "keep", backup).exit_code == 0
    held = check()
    assert held["status"] == "WARNING" and backup in held["message"]
    assert "pinned" in held["message"]


def test_restore_of_one_table_replays_every_entry(cli, aegis_db, backup_config) -> None:
    """--table restores leave the live aegis_erasures in place (it knows nothing of the
    backup's age): the forgotten rows of the restored table still go."""
    _fill(aegis_db)
    cfg = backup_config()
    backup = _create(cli, cfg)
    _json(_forget(cli, cfg, "--context", "agent=alice", "--reason", "r", "--yes"))
    done = _json(cli("--config", str(cfg), "backup", "restore", backup, "--table",
                     "episodic_memory", "--force", "--yes", "--format", "json"))
    assert done["erasures"]["rows_removed"] == 4
    assert _ids(aegis_db, "episodic_memory", "context->>'agent' = 'alice'") == []
    assert len(_ids(aegis_db, "episodic_memory")) == 8


def _ledger(**changes: Any) -> bytes:
    entry = {"erasure_id": "0b6c5e0e-8d4a-4d44-9f43-3f7d0d5b1a2c", "kind": "episodic",
             "memory_id": 7, "content_sha256": "a" * 64,
             "erased_at": "2026-01-01T00:00:00+00:00", "reason": "r", "os_user": "u",
             "db_user": "d", "batch": 0}
    entry.update(changes)
    entry = {k: v for k, v in entry.items() if v is not ...}
    return json.dumps({"ledger_version": 1, "count": 1, "entries": [entry]}).encode()


@pytest.mark.parametrize("changes,problem", [
    ({"memory_id": "7"}, "memory_id"), ({"memory_id": True}, "memory_id"),
    ({"memory_id": -1}, "memory_id"), ({"memory_id": 2**31}, "memory_id"),
    ({"erasure_id": "1; DROP TABLE x"}, "erasure_id"),
    ({"erasure_id": "0B6C5E0E-8D4A-4D44-9F43-3F7D0D5B1A2C"}, "erasure_id"),
    ({"content_sha256": "A" * 64}, "content_sha256"), ({"content_sha256": "ab"}, "content_sha256"),
    ({"kind": "api_keys"}, "kind"), ({"erased_at": "2026-01-01T00:00:00"}, "zone"),
    ({"batch": 1.5}, "batch"), ({"reason": ...}, "no reason"), ({"extra": 1}, "unknown"),
])
def test_a_ledger_file_is_validated_before_it_steers_a_delete(changes: dict[str, Any],
                                                              problem: str) -> None:
    from aegisctl.memory.ledger import LedgerError, load_ledger

    assert load_ledger(_ledger(), "f").entries[0].memory_id == 7
    with pytest.raises(LedgerError) as raised:
        load_ledger(_ledger(**changes), "f")
    assert problem in raised.value.message and "entry 1" in raised.value.message
    assert "\n" not in raised.value.message


def test_a_ledger_file_is_validated_as_a_whole() -> None:
    from aegisctl.memory.ledger import LedgerError, load_ledger

    good = json.loads(_ledger())
    for document, problem in ((dict(good, count=2), "incomplete"),
                              (dict(good, ledger_version=2), "version"),
                              (dict(good, entries={}), "not a list"), ([], "version")):
        with pytest.raises(LedgerError, match=problem):
            load_ledger(json.dumps(document).encode(), "f")
    with pytest.raises(LedgerError, match="not valid JSON"):
        load_ledger(b"\xff{", "f")
