"""Vector search health under filters (issue 25, section 2): a tag on 1 % of the rows defeats a
plain HNSW scan at ef_search 40 (few or no rows come back), `check` says so and names the fix,
iterative scans fix it, and `maint vector-index --tune` finds settings that meet its target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from memory_fixtures import DIM

ROWS = 6000

# Uniform random embeddings; 1 % of the rows carry the tag 'rare' and the agent 'beta'
# (the same rows: the two shapes are equally selective), 2 % are from the last day.
FILL = f"""
INSERT INTO episodic_memory (event_type, summary, tags, context, "timestamp", embedding)
SELECT CASE WHEN g % 100 = 0 THEN 'error' ELSE 'observation' END, 'memory ' || g,
       CASE WHEN g % 100 = 0 THEN ARRAY['rare'] ELSE ARRAY['common'] END,
       jsonb_build_object('agent', CASE WHEN g % 100 = 0 THEN 'beta' ELSE 'alpha' END),
       now() - make_interval(days => CASE WHEN g % 50 = 7 THEN 0 ELSE 10 + g % 300 END),
       (SELECT array_agg(random() - 0.5)::vector FROM generate_series(1, {DIM}) WHERE g > 0)
FROM generate_series(1, {ROWS}) AS g;
ANALYZE episodic_memory;
"""

SHAPES = [{"name": "rare-tag", "tag": "rare"},
          {"name": "agent-beta", "context": {"agent": "beta"}},
          {"name": "last-day", "since": "1d", "kind": "episodic"}]


@pytest.fixture
def filtered_dsn(memory_dsn: str) -> str:
    with psycopg.connect(memory_dsn, autocommit=True) as conn:
        conn.execute("SELECT setseed(0.25)")
        conn.execute(FILL)
    return memory_dsn


def config(write_config: Any, dsn: str, **recall: Any) -> Path:
    return write_config({"targets": {"primary": {"dsn": dsn}},
                         "connection": {"retry": {"attempts": 1}},
                         "checks": {"vector_recall": {"sample": 12, "filters": SHAPES,
                                                      **recall}}})


def check(cli: Any, path: Path) -> tuple[int, dict[str, Any]]:
    result = cli("--config", str(path), "check", "--only", "vector_recall_filtered", "-f",
                 "json")
    [found] = [c for c in json.loads(result.stdout)["targets"][0]["checks"]
               if c["name"] == "vector_recall_filtered"]
    return result.exit_code, found


def test_selective_filter_defeats_plain_hnsw_and_iterative_scan_fixes_it(
        cli: Any, write_config: Any, filtered_dsn: str) -> None:
    from aegisctl.config import Settings
    from aegisctl.diagnostics.filtered_recall import build_cases, prepare_case, run_case
    from aegisctl.diagnostics.settings import FilterShape
    from aegisctl.diagnostics.vectors import vector_inventory

    path = config(write_config, filtered_dsn)
    with psycopg.connect(filtered_dsn, autocommit=True) as conn:
        conn.execute("ALTER DATABASE {} SET hnsw.iterative_scan = off".replace(
            "{}", conn.info.dbname))
    code, found = check(cli, path)
    assert code == 2 and found["status"] == "CRITICAL", found
    assert found["value"] < 0.5
    assert "rare-tag on episodic_memory (60 matching rows)" in found["message"]
    assert "of results short" in found["message"]
    assert "with hnsw.iterative_scan = " in found["message"]
    assert "maint vector-index --tune --yes" in found["message"]
    # The measurement itself: plain HNSW returns short results, iterative scans do not.
    with psycopg.connect(filtered_dsn, autocommit=True) as conn:
        _, indexes = vector_inventory(conn, Settings(), counts=False)
        [case] = build_cases([i for i in indexes if i["table"] == "episodic_memory"
                              and i["method"] == "hnsw"], [FilterShape("t", tag="rare")])
        prepare_case(conn, "public", case, 12, seed=0.5)
        plain = run_case(conn, "public", case, 40, "off")
        strict = run_case(conn, "public", case, 40, "strict_order")
        assert case.plan_uses_index is True and case.matching_rows == ROWS // 100
        assert plain.recall is not None and plain.recall < 0.5
        assert plain.short_share is not None and plain.short_share > 0.5
        assert strict.recall is not None and strict.recall >= 0.9
        assert strict.short_share == 0
    # --tune measures each step and changes nothing without --yes...
    tuned = cli("--config", str(path), "maint", "vector-index", "--tune", "--target-recall",
                "0.9", "--sample", "10", "-f", "json")
    assert tuned.exit_code == 0, tuned.stdout + tuned.stderr
    report = json.loads(tuned.stdout)
    chosen = report["chosen"]
    assert chosen["meets"] and chosen["min_recall"] >= 0.9 and not report["applied"]
    assert chosen["iterative_scan"] in ("relaxed_order", "strict_order")
    assert {s["shape"] for s in report["shapes"]} == {"rare-tag", "agent-beta", "last-day",
                                                      "(unfiltered)"}
    plain = [s for s in report["steps"] if s["iterative_scan"] == "off"]
    assert plain and not plain[0]["meets"] and all(s["p95_ms"] is not None for s in plain)
    assert all(not s["meets"] for s in report["steps"]
               if s["ef_search"] < chosen["ef_search"])
    assert report["statements"][0].startswith("ALTER DATABASE")
    assert current_settings(filtered_dsn)["hnsw.iterative_scan"] == "off"
    # ...and with --yes the database's defaults change: the check now passes.
    applied = cli("--config", str(path), "maint", "vector-index", "--tune", "--target-recall",
                  "0.9", "--sample", "10", "--yes", "-f", "json")
    assert applied.exit_code == 0 and json.loads(applied.stdout)["applied"]
    now = current_settings(filtered_dsn)
    assert now["hnsw.ef_search"] == str(chosen["ef_search"])
    assert now["hnsw.iterative_scan"] == chosen["iterative_scan"]
    code, found = check(cli, path)
    assert code == 0 and found["status"] == "OK", found
    assert f"hnsw.iterative_scan {chosen['iterative_scan']}" in found["message"]
    # A target that is not a recall is refused.
    usage = cli("--config", str(path), "maint", "vector-index", "--tune", "--target-recall",
                "1.5")
    assert usage.exit_code == 2 and "--target-recall 1.5" in usage.stderr


def current_settings(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT vector_dims('[1]'::vector)")
        return {name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
                for name in ("hnsw.ef_search", "hnsw.iterative_scan")}


def test_filter_shapes_are_validated_with_the_key_named(cli: Any, write_config: Any) -> None:
    for shapes, complaint in (
            ([{"name": "x"}], "give at least one condition"),
            ([{"name": "x", "tag": "a"}, {"name": "x", "tag": "b"}], "'x' is used twice"),
            ([{"name": "x", "context": {"agent": "a"}, "kind": "semantic"}],
             "exist only on episodic memories"),
            ([{"name": "x", "tag": "a", "color": "red"}], "unknown key")):
        path = write_config({"targets": {"primary": {"dsn": "postgresql://a@localhost/b"}},
                             "checks": {"vector_recall": {"filters": shapes}}})
        result = cli("--config", str(path), "config", "validate")
        assert result.exit_code == 2, result.stdout
        assert "checks.vector_recall.filters[" in result.stderr and complaint in result.stderr
