"""The embedding recipe: the same text is embedded at import, add and reembed, recorded with
the vector, counted by stats when older, and indexed for full-text search."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from embedding_server import embed
from memory_fixtures import DIM, results

from aegisctl.memory.recipe import RECIPE_VERSION, embed_text, fts_sql

SEMANTIC = {"kind": "semantic", "concept": "PRAGMA busy_timeout",
            "content": "Sets a handler that sleeps while a table is locked."}
EPISODIC = {"kind": "episodic", "event_type": "decision",
            "summary": "Capped billing retries at three", "decision": "three tries, then alert"}


def test_recipe_text_is_pinned() -> None:
    assert RECIPE_VERSION == 2
    assert embed_text("semantic", SEMANTIC) == (
        "PRAGMA busy_timeout. Sets a handler that sleeps while a table is locked.")
    assert embed_text("semantic", {"concept": "What is WAL?", "content": "A log."}) == \
        "What is WAL? A log."
    assert embed_text("semantic", {"concept": "", "content": "Only content."}) == \
        "Only content."
    assert embed_text("episodic", EPISODIC) == (
        "decision: Capped billing retries at three Decision: three tries, then alert")
    assert embed_text("episodic", {"event_type": "note", "summary": "Hello"}) == "note: Hello"


def _stored(dsn: str, table: str) -> list[tuple[list[float], int | None, dict[str, Any]]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT embedding::text, embedding_recipe, to_jsonb(t) FROM {table} t ORDER BY id"
        ).fetchall()
    return [(json.loads(r[0]) if r[0] else [], r[1], r[2]) for r in rows]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-5 for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("record,table", [(SEMANTIC, "semantic_memory"),
                                          (EPISODIC, "episodic_memory")])
def test_import_and_add_embed_the_recipe_text(cli, make_config, tmp_path, memory_dsn,
                                              record, table) -> None:
    config = make_config()
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert cli("--config", str(config), "memory", "import", str(path)).exit_code == 0
    kind = record["kind"]
    text = record["content"] if kind == "semantic" else record["summary"]
    args = ["--config", str(config), "memory", "add", text + " (again)", "--kind", kind]
    if kind == "semantic":
        args += ["--concept", record["concept"]]
    else:
        args += ["--type", record["event_type"], "--decision", record["decision"]]
    assert cli(*args).exit_code == 0
    (imported, imported_recipe, _), (added, added_recipe, row) = _stored(memory_dsn, table)
    assert imported_recipe == added_recipe == RECIPE_VERSION
    assert _close(imported, embed(embed_text(kind, record), DIM))
    assert _close(added, embed(embed_text(kind, row), DIM))
    # The text column alone (recipe 1) would give another vector.
    assert not _close(imported, embed(text, DIM))


def test_stats_and_reembed_stale(cli, make_config, tmp_path, memory_dsn) -> None:
    config = make_config()
    path = tmp_path / "load.jsonl"
    outside = dict(SEMANTIC, content="A vector computed elsewhere.",
                   embedding=embed("elsewhere", DIM))
    path.write_text("\n".join(json.dumps(r) for r in (SEMANTIC, EPISODIC, outside)) + "\n")
    assert cli("--config", str(config), "memory", "import", str(path)).exit_code == 0
    with psycopg.connect(memory_dsn, autocommit=True) as conn:  # as before migration 0009
        conn.execute("UPDATE semantic_memory SET embedding_recipe = 1, "
                     "embedding = embedding WHERE embedding_recipe IS NOT NULL")
        conn.execute("UPDATE episodic_memory SET embedding_recipe = 1")
    stats = json.loads(cli("--config", str(config), "memory", "stats", "-f", "json").stdout)
    assert stats["kinds"]["semantic"]["old_recipe"] == 1
    assert stats["kinds"]["semantic"]["unknown_recipe"] == 1  # its vector came from the file
    assert stats["kinds"]["episodic"]["old_recipe"] == 1
    table = cli("--config", str(config), "memory", "stats", "-f", "table")
    assert "older recipe" in table.stdout
    plan = cli("--config", str(config), "memory", "reembed", "--stale", "--dry-run", "-f", "json")
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.stdout)["would_embed"] == 2  # not the vector from the file
    assert json.loads(plan.stdout)["stale"] is True
    done = cli("--config", str(config), "memory", "reembed", "--stale", "-f", "json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["updated"] == {"episodic": 1, "semantic": 1}
    stats = json.loads(cli("--config", str(config), "memory", "stats", "-f", "json").stdout)
    assert stats["kinds"]["semantic"]["old_recipe"] == 0
    assert stats["kinds"]["episodic"]["old_recipe"] == 0
    assert stats["kinds"]["semantic"]["unknown_recipe"] == 1  # --stale leaves it alone
    stored = _stored(memory_dsn, "semantic_memory")
    assert _close(stored[0][0], embed(embed_text("semantic", SEMANTIC), DIM))
    assert _close(stored[1][0], embed("elsewhere", DIM))


def test_fulltext_indexes_the_recipe_fields(cli, make_config, tmp_path, memory_dsn) -> None:
    config = make_config(embedding={"provider": "none"})
    path = tmp_path / "load.jsonl"
    path.write_text(json.dumps(EPISODIC) + "\n" + json.dumps(SEMANTIC) + "\n")
    assert cli("--config", str(config), "memory", "import", str(path)).exit_code == 0
    # "alert" is only in the decision, "busy_timeout" only in the concept.
    for query, field in (("alert", "summary"), ("busy_timeout", "content")):
        found = results(cli("--config", str(config), "memory", "search", query,
                            "--mode", "keyword", "-f", "jsonl").stdout)
        assert found and found[0][field] in (EPISODIC["summary"], SEMANTIC["content"])
        assert found[0]["match"] == "fulltext"
    with psycopg.connect(memory_dsn) as conn:
        for kind, table, column in (("episodic", "episodic_memory", "summary_tsv"),
                                    ("semantic", "semantic_memory", "content_tsv")):
            row = conn.execute(
                "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
                "ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
                "WHERE d.adrelid = %s::regclass AND a.attname = %s", (table, column)).fetchone()
            assert row is not None
            for piece in ("setweight", "'A'", "'B'"):
                assert piece in row[0]
            assert ("decision" in row[0]) == (kind == "episodic")
            assert fts_sql(kind).count("setweight") == 2
