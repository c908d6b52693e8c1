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
            ([{"name": "x", "tag": "a", "color": "red"}], "unknown key"),
            # An empty value was silently dropped: the shape measured was not the one declared.
            ([{"name": "x", "tag": "", "since": "7d"}], "filters[0].tag: empty"),
            ([{"name": "x", "event_type": "", "tag": "a"}], "filters[0].event_type: empty"),
            ([{"name": "x", "since": "0s"}], "filters[0].since: a positive duration"),
            # PostgreSQL text cannot hold NUL: the check would fail at every run instead.
            ([{"name": "x", "tag": "a\x00b"}], "filters[0].tag: contains a NUL"),
            ([{"name": "x", "context": {"a\x00": "b"}}], "filters[0].context: contains a NUL")):
        path = write_config({"targets": {"primary": {"dsn": "postgresql://a@localhost/b"}},
                             "checks": {"vector_recall": {"filters": shapes}}})
        result = cli("--config", str(path), "config", "validate")
        assert result.exit_code == 2, result.stdout
        assert "checks.vector_recall.filters[" in result.stderr and complaint in result.stderr


def test_tune_measures_and_applies_max_scan_tuples_whatever_the_database_default(
        cli: Any, write_config: Any, filtered_dsn: str) -> None:
    """A database default of hnsw.max_scan_tuples (a tiny one here, as left by hand or an
    earlier --tune) must neither leak into the measurements nor survive the settings --tune
    applies: what new sessions get is what was measured."""
    with psycopg.connect(filtered_dsn, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f'ALTER DATABASE "{database}" SET hnsw.max_scan_tuples = 1')
    # A shape no row matches (a typo'd tag) is said, not silently left out.
    path = config(write_config, filtered_dsn,
                  filters=[*SHAPES, {"name": "typo", "tag": "no-such-tag"}])
    result = cli("--config", str(path), "maint", "vector-index", "--tune", "--target-recall",
                 "0.9", "--sample", "10", "--yes", "-f", "json")
    assert result.exit_code == 0, result.stderr
    chosen = json.loads(result.stdout)["chosen"]
    # strict_order meets 0.9 at ef_search 10 on this data with pgvector's 20 000 tuples.
    assert chosen["iterative_scan"] != "off" and chosen["ef_search"] <= 64, chosen
    with psycopg.connect(filtered_dsn, autocommit=True) as conn:
        conn.execute("SELECT vector_dims('[1]'::vector)")
        tuples = conn.execute("SELECT current_setting('hnsw.max_scan_tuples')").fetchone()[0]
    assert tuples == str(chosen["max_scan_tuples"] or 20000)
    notes = json.loads(result.stdout)["notes"]
    assert any("typo on episodic_memory" in n and "no row" in n for n in notes)
    # semantic_memory holds no vectors at all here: not a shape's fault, not listed.
    assert not any("semantic_memory" in n for n in notes), notes
    code, found = check(cli, path)
    assert code == 0 and "typo on episodic_memory" in found["message"], found
    assert "semantic_memory" not in found["message"], found


def test_tune_with_nothing_to_measure_says_so(cli: Any, write_config: Any,
                                             memory_dsn: str) -> None:
    """An empty memory table: one line saying there is nothing to measure, not 39 empty
    steps ending in "no step met the target"."""
    result = cli("--config", str(config(write_config, memory_dsn)), "maint", "vector-index",
                 "--tune")
    assert result.exit_code == 1
    assert "no stored vectors" in result.stderr and result.stdout == "", result.output


def test_tune_without_the_right_to_apply_still_reports_what_it_measured(
        cli: Any, write_config: Any, filtered_dsn: str) -> None:
    """A role that may read but not ALTER DATABASE: the measurements and the statements to
    run as the owner are the result (exit 1), not lost behind a one-line error."""
    from psycopg.conninfo import make_conninfo

    role = "tune_reader"
    with psycopg.connect(filtered_dsn, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        path = config(write_config, make_conninfo(filtered_dsn, user=role))
        result = cli("--config", str(path), "maint", "vector-index", "--tune",
                     "--target-recall", "0.9", "--sample", "5", "--yes", "-f", "json")
        assert result.exit_code == 1, result.output
        report = json.loads(result.stdout)
        assert report["chosen"] and not report["applied"]
        assert report["statements"][0].startswith("ALTER DATABASE")
        assert "must be owner" in report["apply_error"]
        assert current_settings(filtered_dsn)["hnsw.iterative_scan"] == "off"
    finally:
        with psycopg.connect(filtered_dsn, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
            conn.execute(f"DROP ROLE {role}")


def test_tune_refuses_a_bad_target_before_connecting(cli: Any, write_config: Any) -> None:
    """A usage error is exit 2 whether or not the server answers (not 3 for a server that
    was never needed)."""
    path = write_config({"targets": {"primary": {"dsn": "postgresql://a@127.0.0.1:1/b"}},
                         "connection": {"retry": {"attempts": 1}}})
    for value in ("0", "1.5", "-1", "nan"):
        result = cli("--config", str(path), "maint", "vector-index", "--tune",
                     "--target-recall", value)
        assert result.exit_code == 2 and "--target-recall" in result.stderr, result.output
