"""memory import / add / export / reembed on a real database and embedding server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from embedding_server import EmbeddingServer
from memory_fixtures import episodic, jsonl, results


def _count(conn: psycopg.Connection[Any], where: str = "TRUE") -> int:
    conn.rollback()
    row = conn.execute(f"SELECT count(*) FROM episodic_memory WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


def _write(tmp_path: Path, text: str, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = [episodic(f"memory number {i} about billing", tags=["t"]) for i in range(5)]


def test_bad_line_rolls_back_or_is_skipped(cli, make_config, tmp_path, memory_db) -> None:
    config = make_config()
    lines = jsonl(GOOD[:2]).splitlines()
    lines.insert(2, '{"kind": "episodic", "summary": "no event type"}')
    lines.append("{not json")
    lines.extend(jsonl(GOOD[2:]).splitlines())
    path = _write(tmp_path, "\n".join(lines) + "\n")
    result = cli("--config", str(config), "memory", "import", str(path))
    assert result.exit_code == 1
    assert "line 3: event_type is required" in result.stderr
    assert "nothing was imported" in result.stderr
    assert _count(memory_db) == 0
    result = cli("--config", str(config), "memory", "import", str(path), "--skip-bad",
                 "-f", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["inserted"] == {"episodic": 5, "semantic": 0}
    assert [b["line"] for b in body["bad_lines"]] == [3, 4]
    assert "line 4: invalid JSON" in result.stderr
    assert _count(memory_db) == 5


def test_database_rejection_rolls_back_everything(cli, make_config, tmp_path,
                                                   memory_db) -> None:
    config = make_config()
    too_long = episodic("x" * 10, event_type="e" * 101)
    path = _write(tmp_path, jsonl([*GOOD, too_long]))
    result = cli("--config", str(config), "memory", "import", str(path))
    assert result.exit_code == 1 and "line 6: event_type: longer than 100" in result.stderr
    assert _count(memory_db) == 0


def test_dedupe_and_batched_embeddings(cli, make_config, tmp_path, memory_db,
                                       embedding_server: EmbeddingServer) -> None:
    config = make_config(embedding={"batch_size": 2})
    records = [*GOOD, GOOD[0]]  # one duplicate inside the file
    path = _write(tmp_path, jsonl(records))
    first = json.loads(cli("--config", str(config), "memory", "import", str(path),
                           "-f", "json").stdout)
    assert first["inserted"]["episodic"] == 5 and first["duplicates"] == 1
    assert first["embedded"] == 5
    assert embedding_server.state.batch_sizes == [2, 2, 1]
    again = json.loads(cli("--config", str(config), "memory", "import", str(path),
                           "-f", "json").stdout)
    assert again["inserted"]["episodic"] == 0 and again["duplicates"] == 6
    assert _count(memory_db) == 5 and _count(memory_db, "embedding IS NULL") == 0
    added = json.loads(cli("--config", str(config), "memory", "add", GOOD[1]["summary"],
                           "-f", "json").stdout)
    assert added == {"id": "episodic:2", "inserted": False, "embedded": True}


def test_rows_carrying_an_embedding_are_not_re_embedded(cli, make_config, tmp_path,
                                                        embedding_server) -> None:
    config = make_config()
    path = _write(tmp_path, jsonl(GOOD, with_embeddings=True))
    body = json.loads(cli("--config", str(config), "memory", "import", str(path),
                          "-f", "json").stdout)
    assert body["embedded"] == 0 and embedding_server.state.requests == 0
    wrong = dict(GOOD[0], summary="other", embedding=[0.1] * 31)
    result = cli("--config", str(config), "memory", "import",
                 str(_write(tmp_path, json.dumps(wrong) + "\n", "w.jsonl")))
    assert result.exit_code == 1 and "expected 32 finite numbers" in result.stderr


def test_import_without_provider_then_reembed_missing(cli, make_config, tmp_path,
                                                      memory_db) -> None:
    plain = make_config(embedding={"provider": "none"})
    result = cli("--config", str(plain), "memory", "import", str(_write(tmp_path, jsonl(GOOD))))
    assert result.exit_code == 0 and "reembed --missing" in result.stderr
    assert _count(memory_db, "embedding IS NULL") == 5
    assert cli("--config", str(plain), "memory", "reembed", "--missing").exit_code == 2
    config = make_config()
    body = json.loads(cli("--config", str(config), "memory", "reembed", "--missing",
                          "-f", "json").stdout)
    assert body["updated"] == {"episodic": 5, "semantic": 0}
    assert _count(memory_db, "embedding IS NULL") == 0


def test_reembed_resumes_after_interruption(cli, make_config, tmp_path, memory_db,
                                            embedding_server: EmbeddingServer) -> None:
    records = [episodic(f"event {i} about deploys") for i in range(10)]
    config = make_config(embedding={"batch_size": 2})
    cli("--config", str(config), "memory", "import", str(_write(tmp_path, jsonl(records))))
    memory_db.execute("UPDATE episodic_memory SET embedding = NULL")  # as after a model change
    memory_db.commit()
    refuse = cli("--config", str(config), "memory", "reembed")
    assert refuse.exit_code == 2 and "--yes" in refuse.stderr
    # The model fails after three more batches: six rows are done and committed.
    embedding_server.state.fail_after_requests = embedding_server.state.requests + 3
    failed = cli("--config", str(config), "memory", "reembed", "--yes")
    assert failed.exit_code == 1 and "HTTP 500" in failed.stderr
    assert _count(memory_db, "embedding IS NOT NULL") == 6
    embedding_server.state.fail_after_requests = None
    before = embedding_server.state.requests
    body = json.loads(cli("--config", str(config), "memory", "reembed", "--yes",
                          "-f", "json").stdout)
    assert body["resumed_from"] == {"episodic": 6}
    assert body["updated"] == {"episodic": 4, "semantic": 0}
    assert embedding_server.state.requests - before == 2
    assert _count(memory_db, "embedding IS NULL") == 0
    memory_db.rollback()
    assert memory_db.execute("SELECT count(*) FROM aegis_metadata "
                             "WHERE key = 'memory_reembed'").fetchone() == (0,)


def test_export_round_trip_with_filters(cli, make_config, tmp_path, memory_db) -> None:
    config = make_config()
    records = [*GOOD, episodic("an error", event_type="error", importance="high", tags=["x"]),
               {"kind": "semantic", "concept": "c", "content": "a fact", "category": "k"}]
    cli("--config", str(config), "memory", "import", str(_write(tmp_path, jsonl(records))))
    out = tmp_path / "errors.jsonl"
    result = cli("--config", str(config), "memory", "export", "--type", "error",
                 "--embeddings", "-o", str(out))
    assert result.exit_code == 0, result.output
    exported = results(out.read_text())
    assert len(exported) == 1 and exported[0]["summary"] == "an error"
    assert len(exported[0]["embedding"]) == 32
    everything = results(cli("--config", str(config), "memory", "export").stdout)
    assert [r["kind"] for r in everything] == ["episodic"] * 6 + ["semantic"]
    # An export imports as-is (ids ignored); everything is a duplicate of itself.
    again = json.loads(cli("--config", str(config), "memory", "import", str(out),
                           "-f", "json").stdout)
    assert again["duplicates"] == 1 and again["embedded"] == 0


def test_sample_imports_and_searches_without_a_provider(cli, make_config) -> None:
    config = make_config(embedding={"provider": "none"})
    body = json.loads(cli("--config", str(config), "memory", "import", "--sample",
                          "-f", "json").stdout)
    assert body["inserted"]["episodic"] > 50 and body["inserted"]["semantic"] > 20
    assert body["bad_lines"] == []
    found = results(cli("--config", str(config), "memory", "search",
                        "what did we decide about the billing retries", "--type",
                        "decision", "--since", "30d").stdout)
    assert "billing retries" in found[0]["summary"]
    assert cli("--config", str(config), "memory", "import").exit_code == 2
