"""memory import at scale: committed batches, resume by re-running, dedupe by the database,
no statement open across provider calls, and migration 0007's handling of old duplicates."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from conftest import dsn_of
from embedding_server import EmbeddingServer
from memory_fixtures import episodic, jsonl

import aegisctl.memory.ingest as ingest


def _count(conn: psycopg.Connection[Any], sql: str = "SELECT count(*) FROM episodic_memory"
           ) -> int:
    conn.rollback()
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def _file(tmp_path: Path, n: int, name: str = "big.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(jsonl([episodic(f"deploy note {i} about billing retries") for i in range(n)]))
    return path


def test_killed_import_keeps_committed_batches_and_rerun_continues(
        cli, make_config, tmp_path, memory_db, embedding_server: EmbeddingServer) -> None:
    config = make_config(embedding={"batch_size": 64, "retries": 0})
    assert ingest.chunk_rows(64) == ingest.CHUNK_ROWS
    path = _file(tmp_path, 3 * ingest.CHUNK_ROWS)
    # The model dies after the first chunk's requests and a few more.
    per_chunk = ingest.CHUNK_ROWS // 64
    embedding_server.state.fail_after_requests = per_chunk + 2
    failed = cli("--config", str(config), "memory", "import", str(path))
    assert failed.exit_code == 1 and "HTTP 500" in failed.stderr
    kept = _count(memory_db)
    assert kept >= ingest.CHUNK_ROWS and kept % ingest.CHUNK_ROWS == 0
    assert _count(memory_db, "SELECT count(*) FROM episodic_memory "
                             "WHERE embedding IS NULL") == 0
    # Running the same command again continues: only the rest is embedded.
    embedding_server.state.fail_after_requests = None
    before = sum(embedding_server.state.batch_sizes)
    body = json.loads(cli("--config", str(config), "memory", "import", str(path),
                          "-f", "json").stdout)
    assert body["inserted"]["episodic"] == 3 * ingest.CHUNK_ROWS - kept
    assert body["duplicates"] == kept
    assert sum(embedding_server.state.batch_sizes) - before == 3 * ingest.CHUNK_ROWS - kept
    assert _count(memory_db) == 3 * ingest.CHUNK_ROWS
    assert _count(memory_db, "SELECT count(DISTINCT content_hash) FROM episodic_memory") \
        == 3 * ingest.CHUNK_ROWS


def test_import_killed_with_sigkill_resumes(make_config, tmp_path, memory_db, clean_env,
                                            embedding_server: EmbeddingServer) -> None:
    config = make_config(embedding={"batch_size": 64})
    embedding_server.state.delay = 0.1
    n = 6 * ingest.CHUNK_ROWS
    path = _file(tmp_path, n)
    command = [sys.executable, "-m", "aegisctl", "--config", str(config), "memory", "import",
               str(path), "-f", "json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _count(memory_db) < ingest.CHUNK_ROWS and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=30)
    time.sleep(0.5)  # the killed process's last request finishes on the server's side
    kept = _count(memory_db)
    assert 0 < kept < n and kept % ingest.CHUNK_ROWS == 0  # whole batches only
    before = sum(embedding_server.state.batch_sizes)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    body = json.loads(rerun.stdout)
    assert body["inserted"]["episodic"] == n - kept and body["duplicates"] == kept
    assert sum(embedding_server.state.batch_sizes) - before == n - kept
    assert _count(memory_db, "SELECT count(DISTINCT content_hash) FROM episodic_memory") == n


def test_writing_needs_migration_0007(cli, make_config, tmp_path, memory_db) -> None:
    memory_db.execute("DROP INDEX idx_semantic_content_hash")
    memory_db.commit()
    config = make_config(embedding={"provider": "none"})
    for args in (["memory", "import", str(_file(tmp_path, 3))], ["memory", "add", "x"]):
        result = cli("--config", str(config), *args)
        assert result.exit_code == 1, result.output
        assert "no unique index on content_hash" in result.stderr
        assert "schema migrate" in result.stderr


def test_chunks_are_whole_provider_requests() -> None:
    assert ingest.chunk_rows(None) == ingest.CHUNK_ROWS
    assert ingest.chunk_rows(100) == 300 and ingest.chunk_rows(1000) == 1000


def test_no_statement_is_open_across_provider_calls(cli, make_config, tmp_path, memory_db,
                                                    embedding_server: EmbeddingServer) -> None:
    """A statement_timeout far shorter than the whole embedding time: each write is short."""
    config = make_config(embedding={"batch_size": 20},
                         connection={"retry": {"attempts": 1},
                                     "timeouts": {"query": {"statement_timeout": "1s"}}})
    embedding_server.state.delay = 0.15
    path = _file(tmp_path, 2 * ingest.CHUNK_ROWS)  # ~26 requests, ~4 s of embedding
    result = cli("--config", str(config), "memory", "import", str(path), "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inserted"]["episodic"] == 2 * ingest.CHUNK_ROWS
    assert _count(memory_db) == 2 * ingest.CHUNK_ROWS


def test_concurrent_imports_of_one_file_store_each_text_once(
        make_config, tmp_path, memory_db, embedding_server: EmbeddingServer, clean_env) -> None:
    config = make_config(embedding={"batch_size": 25})
    embedding_server.state.delay = 0.02
    n = 2 * ingest.CHUNK_ROWS + 17
    path = _file(tmp_path, n)
    command = [sys.executable, "-m", "aegisctl", "--config", str(config), "memory", "import",
               str(path), "-f", "json"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    bodies = [json.loads(out) for out, _ in outputs]
    assert sum(b["inserted"]["episodic"] for b in bodies) == n
    assert _count(memory_db) == n
    assert _count(memory_db, "SELECT count(DISTINCT content_hash) FROM episodic_memory") == n


def test_the_database_refuses_a_second_copy_of_a_text(memory_db) -> None:
    memory_db.execute("INSERT INTO episodic_memory (event_type, summary) VALUES ('n', 'same')")
    memory_db.commit()
    try:
        memory_db.execute("INSERT INTO episodic_memory (event_type, summary) "
                          "VALUES ('m', 'same')")
    except psycopg.errors.UniqueViolation:
        memory_db.rollback()
    else:
        raise AssertionError("a duplicate text was stored")
    memory_db.execute("INSERT INTO semantic_memory (concept, content) VALUES ('c', 'same')")
    memory_db.commit()  # per kind: the same text may be an episode and a fact


def test_migration_0007_archives_old_duplicates_and_repoints_references(empty_db) -> None:
    from aegisctl.config import SchemaSettings
    from aegisctl.schema import init_schema
    from aegisctl.schema.runner import migrate

    settings = SchemaSettings(embedding_dim=4)
    conn = psycopg.connect(dsn_of(empty_db), autocommit=True)
    with conn:
        # Everything up to 0006, as a database made before this release.
        from aegisctl.schema.extensions import install_extensions

        install_extensions(conn, None, settings.extensions)
        migrate(conn, settings, to=6)
        ids = [conn.execute("INSERT INTO episodic_memory (event_type, summary, embedding) "
                            "VALUES ('n', %s, '[1,0,0,0]') RETURNING id",
                            (text,)).fetchone()[0]  # type: ignore[index]
               for text in ("a", "b", "a", "a")]
        conn.execute("UPDATE episodic_memory SET related_memories = %s WHERE id = %s",
                     ([ids[2], ids[1], ids[3]], ids[1]))
        conn.execute("INSERT INTO decision_outcomes (decision_id, task_context, alternatives, "
                     "chosen_option, reasoning) VALUES (%s, 't', '[]', 'x', 'r')", (ids[3],))
        for text in ("f", "f"):
            conn.execute("INSERT INTO semantic_memory (concept, content) VALUES ('c', %s)",
                         (text,))
        init_schema(conn, settings)
        assert conn.execute("SELECT id, summary FROM episodic_memory ORDER BY id").fetchall() \
            == [(ids[0], "a"), (ids[1], "b")]
        archived = conn.execute("SELECT kind, id, kept_id, row_data->>'summary' "
                                "FROM aegis_memory_duplicates ORDER BY kind, id").fetchall()
        assert archived[:2] == [("episodic", ids[2], ids[0], "a"),
                                ("episodic", ids[3], ids[0], "a")]
        assert [r[0] for r in archived[2:]] == ["semantic"]
        assert conn.execute("SELECT related_memories FROM episodic_memory WHERE id = %s",
                            (ids[1],)).fetchone() == ([ids[0], ids[1], ids[0]],)
        assert conn.execute("SELECT decision_id FROM decision_outcomes").fetchone() \
            == (ids[0],)
        assert conn.execute("SELECT count(*) FROM semantic_memory").fetchone() == (1,)
