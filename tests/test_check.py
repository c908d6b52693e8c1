"""aegisctl check: thresholds from the config, exit codes, JSON/nagios/Prometheus outputs, backups,
and a real streaming standby with lag."""
# ruff: noqa: F811  (fixtures imported from diag_fixtures are parameters here)

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from diag_fixtures import Background, Pair, background, replica_pair, wait_for  # noqa: F401
from prometheus_client.parser import text_string_to_metric_families

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    Status,
    grade,
    register_check,
    registered_checks,
)

CHECK_KEYS = {"name", "status", "value", "unit", "warning", "critical", "min", "max", "message"}


def run_check(cli: Any, config: Path, *args: str, target: str | None = None) -> tuple[int, dict[str, Any]]:
    prefix = ["--config", str(config)] + (["--target", target] if target else [])
    result = cli(*prefix, "check", *args, "-f", "json")
    return result.exit_code, json.loads(result.stdout)


def checks_of(report: dict[str, Any], target: int = 0) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["targets"][target]["checks"]}


def exec_(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def config_for(write_config: Any, dsn: str, **checks: Any) -> Path:
    return write_config({"targets": {"primary": {"dsn": dsn}},
                         "connection": {"retry": {"attempts": 1}}, "checks": checks})


def test_healthy_database_is_ok_and_json_shape_is_stable(cli, write_config, aegis_dsn) -> None:
    config = config_for(write_config, aegis_dsn, vector_recall={"sample": 0})
    code, report = run_check(cli, config, "--skip", "slow_statements")
    assert code == 0, report
    assert set(report) == {"status", "exit_code", "checked_at", "targets"}
    assert report["status"] == "OK" and report["exit_code"] == 0
    [target] = report["targets"]
    assert set(target) == {"target", "role", "reachable", "status", "checks", "skipped",
                           "elapsed_ms"}
    assert target["target"] == "primary" and target["role"] == "primary" and target["reachable"]
    checks = checks_of(report)
    assert {"connection", "connections", "cache_hit_ratio", "slow_queries", "long_transactions",
            "lock_waits", "wraparound", "invalid_indexes"} <= set(checks)
    for check in checks.values():
        assert set(check) == CHECK_KEYS
        assert check["status"] == "OK"
    assert checks["connections"]["unit"] == "%" and checks["connections"]["warning"] == 80
    assert checks["cache_hit_ratio"]["message"].startswith("warming up")  # an idle new database
    skipped = {s["name"]: s["reason"] for s in target["skipped"]}
    assert "allocated" in skipped["database_size"]
    assert "no standby" in skipped["replication_lag"]
    assert "backups" in skipped["backup_age"]
    assert "vector_recall" in skipped


def test_long_transaction_crosses_thresholds_from_config(cli, write_config, db_dsn,
                                                         background: Background) -> None:
    idle = background.connect(db_dsn, autocommit=False)
    idle.execute("SELECT 1")
    time.sleep(1.3)
    warn = config_for(write_config, db_dsn, long_transaction_seconds={"warning": 1, "critical": 60})
    code, report = run_check(cli, warn, "--only", "long_transactions")
    check = checks_of(report)["long_transactions"]
    assert (code, check["status"]) == (1, "WARNING")
    assert check["value"] >= 1 and check["warning"] == 1 and check["critical"] == 60
    assert f"pid {idle.info.backend_pid}" in check["message"]
    assert "idle in transaction" in check["message"]
    crit = config_for(write_config, db_dsn, long_transaction_seconds={"warning": "0.5s",
                                                                      "critical": "1s"})
    code, report = run_check(cli, crit, "--only", "long_transactions")
    assert (code, checks_of(report)["long_transactions"]["status"]) == (2, "CRITICAL")
    # A nightly dump's transaction can be left out by its application_name.
    idle.execute("SET application_name = 'pg_dump'")
    ignoring = config_for(write_config, db_dsn, ignore_applications=["pg_%"],
                          long_transaction_seconds={"warning": 1, "critical": 60})
    code, report = run_check(cli, ignoring, "--only", "long_transactions")
    assert (code, checks_of(report)["long_transactions"]["status"]) == (0, "OK")
    idle.rollback()
    code, report = run_check(cli, crit, "--only", "long_transactions")
    assert (code, checks_of(report)["long_transactions"]["status"]) == (0, "OK")


def test_blocked_lock_and_slow_query(cli, write_config, db_dsn, background: Background) -> None:
    exec_(db_dsn, "CREATE TABLE t (id int)")
    holder = background.connect(db_dsn, autocommit=False)
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    waiter = background.run(db_dsn, "SELECT * FROM t")
    with psycopg.connect(db_dsn, autocommit=True) as watch:
        wait_for(lambda: watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND now() - state_change > interval '1.2 s'").fetchone() == (1,))
    config = config_for(write_config, db_dsn, lock_wait_seconds={"warning": 1, "critical": 600},
                        slow_query_seconds={"warning": 1, "critical": 600})
    code, report = run_check(cli, config, "--only", "lock_waits,slow_queries")
    checks = checks_of(report)
    assert code == 1
    assert checks["lock_waits"]["status"] == "WARNING"
    assert f"pid {waiter.info.backend_pid}" in checks["lock_waits"]["message"]
    assert str(holder.info.backend_pid) in checks["lock_waits"]["message"]
    # The blocked SELECT is also an active statement running for over a second.
    assert checks["slow_queries"]["status"] == "WARNING"
    holder.rollback()


def test_invalid_index_is_a_warning(cli, write_config, db_dsn) -> None:
    exec_(db_dsn, "CREATE TABLE u (code int)", "INSERT INTO u VALUES (1), (1)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        exec_(db_dsn, "CREATE UNIQUE INDEX CONCURRENTLY u_code ON u (code)")
    code, report = run_check(cli, config_for(write_config, db_dsn), "--only", "invalid_indexes")
    check = checks_of(report)["invalid_indexes"]
    assert (code, check["status"], check["value"]) == (1, "WARNING", 1)
    assert "u_code" in check["message"]


def test_missing_pg_stat_statements_is_unknown(cli, write_config, db_dsn) -> None:
    code, report = run_check(cli, config_for(write_config, db_dsn), "--only", "slow_statements")
    check = checks_of(report)["slow_statements"]
    assert (code, check["status"]) == (3, "UNKNOWN")
    assert "shared_preload_libraries" in check["message"]


def test_slow_statement_from_pg_stat_statements(cli, write_config, aegis_dsn) -> None:
    exec_(aegis_dsn, "SELECT pg_sleep(1.1)")
    config = config_for(write_config, aegis_dsn, slow_query_seconds={"warning": 1, "critical": 2,
                                                                      "min_calls": 1})
    code, report = run_check(cli, config, "--only", "slow_statements")
    check = checks_of(report)["slow_statements"]
    assert (code, check["status"]) == (1, "WARNING")
    assert "pg_sleep" in check["message"] and check["value"] >= 1.0
    # The next run judges only what happened since this one: the alert clears by itself.
    code, report = run_check(cli, config, "--only", "slow_statements")
    check = checks_of(report)["slow_statements"]
    assert (code, check["status"]) == (0, "OK"), check
    assert "since the previous check" in check["message"]
    # Below the minimum number of calls in the window, a slow statement is not judged.
    exec_(aegis_dsn, "SELECT pg_sleep(1.1)")
    few = config_for(write_config, aegis_dsn, slow_query_seconds={"warning": 1, "critical": 2,
                                                                   "min_calls": 2})
    assert run_check(cli, few, "--only", "slow_statements")[0] == 0
    exec_(aegis_dsn, "SELECT pg_sleep(1.1)", "SELECT pg_sleep(1.1)")
    code, report = run_check(cli, few, "--only", "slow_statements")
    assert (code, checks_of(report)["slow_statements"]["status"]) == (1, "WARNING")


def test_database_size_against_allocation(cli, write_config, db_dsn) -> None:
    config = config_for(write_config, db_dsn, database_size_pct={"allocated": "1MB"})
    code, report = run_check(cli, config, "--only", "database_size")
    check = checks_of(report)["database_size"]
    assert (code, check["status"]) == (2, "CRITICAL") and check["value"] > 100
    roomy = config_for(write_config, db_dsn, database_size_pct={"allocated": "1TB"})
    assert run_check(cli, roomy, "--only", "database_size")[0] == 0


def test_vector_index_checks_and_recall_floor(cli, write_config, db_dsn) -> None:
    exec_(db_dsn, "CREATE EXTENSION vector",
          "CREATE TABLE mem (id serial PRIMARY KEY, e vector(3))",
          "INSERT INTO mem (e) SELECT ARRAY[random(), random(), random()]::vector "
          "FROM generate_series(1, 1500)",
          "CREATE INDEX mem_e ON mem USING hnsw (e vector_l2_ops)",
          "ANALYZE mem",
          "SELECT count(*) FROM mem")  # a sequential scan; the index is never used
    ok = config_for(write_config, db_dsn, vector_recall={"sample": 5, "warning": 0.5,
                                                          "critical": 0.2})
    code, report = run_check(cli, ok, "--only", "vector_indexes_invalid,vector_indexes_unused,"
                             "vector_recall")
    checks = checks_of(report)
    assert checks["vector_indexes_invalid"]["status"] == "OK"
    assert checks["vector_indexes_unused"]["status"] == "WARNING"
    assert "public.mem_e" in checks["vector_indexes_unused"]["message"]
    assert checks["vector_recall"]["status"] == "OK", checks["vector_recall"]["message"]
    assert 0.5 <= checks["vector_recall"]["value"] <= 1
    # A floor no approximate index can meet (recall above 1) is refused by the config...
    bad = config_for(write_config, db_dsn, vector_recall={"warning": 1.5, "critical": 0.9})
    result = cli("--config", str(bad), "check", "-f", "json")
    assert result.exit_code == 3 and "vector_recall" in result.stderr
    # ...and a floor of exactly 1.0 with a tiny ef_search makes recall a warning or worse.
    strict = write_config({"targets": {"primary": {"dsn": db_dsn}}, "search": {"ef_search": 1},
                           "checks": {"vector_recall": {"sample": 5, "warning": 1.0,
                                                        "critical": 0.0}}})
    code, report = run_check(cli, strict, "--only", "vector_recall")
    assert code == 1 and checks_of(report)["vector_recall"]["value"] < 1.0
    # Tables over max_rows are not measured (the exact side of each query is a full scan).
    small = config_for(write_config, db_dsn, vector_recall={"sample": 5, "max_rows": 1000})
    code, report = run_check(cli, small, "--only", "vector_recall")
    check = checks_of(report)["vector_recall"]
    assert check["status"] == "UNKNOWN" and "public.mem_e" in check["message"] and code == 3
    code, report = run_check(cli, small)
    skipped = {s["name"]: s["reason"] for s in report["targets"][0]["skipped"]}
    assert "public.mem_e" in skipped["vector_recall"]
    # A failed concurrent build leaves the ANN index invalid (simulated in the catalog).
    exec_(db_dsn, "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'mem_e'::regclass")
    code, report = run_check(cli, ok, "--only", "vector_indexes_invalid")
    check = checks_of(report)["vector_indexes_invalid"]
    assert (code, check["status"]) == (1, "WARNING") and "mem_e" in check["message"]


def test_unreachable_target_is_critical_and_disk_checks_still_run(cli, write_config, tmp_path) -> None:
    config = write_config({"targets": {"primary": {"dsn": "postgresql://nobody@127.0.0.1:1/x"}},
                           "connection": {"retry": {"attempts": 1}, "connect_timeout": "2s"},
                           "backup": {"directory": str(tmp_path / "backups")}})
    code, report = run_check(cli, config)
    assert code == 2 and report["status"] == "CRITICAL"
    [target] = report["targets"]
    assert target["reachable"] is False and target["role"] is None
    checks = checks_of(report)
    assert checks["connection"]["status"] == "CRITICAL"
    assert checks["backup_age"]["status"] == "CRITICAL"  # configured, and no backup yet
    assert {s["name"] for s in target["skipped"]} >= {"connections", "wraparound"}
    nagios = cli("--config", str(config), "check", "--format", "nagios")
    assert nagios.exit_code == 2
    assert nagios.stdout.startswith("AEGISCTL CRITICAL - ")


def test_backup_age_restore_test_age_and_pending_uploads(cli, write_config, aegis_dsn,
                                                         tmp_path) -> None:
    config = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                           "backup": {"directory": str(tmp_path / "b")}})
    created = cli("--config", str(config), "backup", "create", "--verify", "quick", "-f", "json")
    assert created.exit_code == 0, created.output
    code, report = run_check(cli, config, "--only", "backup_age,restore_test_age,"
                             "backup_pending_uploads")
    checks = checks_of(report)
    assert checks["backup_age"]["status"] == "OK" and checks["backup_age"]["value"] < 120
    assert checks["restore_test_age"]["status"] == "CRITICAL"
    assert "restore-test" in checks["restore_test_age"]["message"]
    # Asked for by name and not applicable: UNKNOWN with the reason, never silently left out.
    assert checks["backup_pending_uploads"]["status"] == "UNKNOWN"
    assert "backup.remote" in checks["backup_pending_uploads"]["message"]
    assert code == 2
    tested = cli("--config", str(config), "backup", "create", "--verify", "restore-test")
    assert tested.exit_code == 0, tested.output
    code, report = run_check(cli, config, "--only", "backup_age,restore_test_age")
    assert code == 0 and checks_of(report)["restore_test_age"]["value"] < 120
    aged = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "backup": {"directory": str(tmp_path / "b")},
                         "checks": {"backup_age": {"warning": "0s", "critical": "1h"}}})
    time.sleep(1.1)
    assert run_check(cli, aged, "--only", "backup_age")[0] == 1


def test_nagios_output_follows_the_plugin_guidelines(cli, write_config, db_dsn) -> None:
    config = config_for(write_config, db_dsn, connections_pct={"warning": 0, "critical": 99})
    result = cli("--config", str(config), "check", "--format", "nagios",
                 "--only", "connections,wraparound")
    assert result.exit_code == 1
    first, *details = result.stdout.rstrip("\n").split("\n")
    status, perf = first.split(" | ")
    assert status.startswith("AEGISCTL WARNING - 1 warning: connections: ")
    perf_re = re.compile(r"^'?[^=']+'?=(U|-?[0-9.e+]+(s|%|B)?)(;[0-9.e+-]*){0,4}$")
    labels = []
    for item in perf.split(" "):
        assert perf_re.match(item), item
        labels.append(item.split("=")[0])
    assert labels == ["connection", "connections", "wraparound"]
    assert re.match(r"connections=\d+(\.\d+)?%;0;99;0;100$", perf.split(" ")[1])
    assert details[0].startswith("OK connection: ")
    assert any(d.startswith("WARNING connections: ") for d in details)


def test_prometheus_textfile_parses_back(cli, write_config, db_dsn, tmp_path) -> None:
    config = config_for(write_config, db_dsn)
    out = tmp_path / "aegisctl.prom"
    result = cli("--config", str(config), "check", "--only", "connections,wraparound",
                 "--prometheus", str(out))
    assert result.exit_code == 0, result.output
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    status = {s.labels["check"]: s.value for s in families["aegisctl_check_status"].samples}
    assert status == {"connection": 0, "connections": 0, "wraparound": 0}
    [used] = families["aegisctl_connections_used_ratio"].samples
    assert used.labels == {"target": "primary"} and 0 < used.value <= 1
    warn = {s.labels["check"]: s.value
            for s in families["aegisctl_check_warning_threshold_ratio"].samples}
    assert warn["connections"] == 0.8
    assert families["aegisctl_target_up"].samples[0].value == 1
    assert families["aegisctl_check_overall_status"].samples[0].value == 0
    assert not list(tmp_path.glob("aegisctl.prom.*"))  # the temporary file was renamed
    missing = cli("--config", str(config), "check", "--prometheus", str(tmp_path / "no" / "x.prom"))
    assert missing.exit_code == 3 and "does not exist" in missing.stderr


def test_only_skip_and_list(cli, write_config, db_dsn) -> None:
    config = config_for(write_config, db_dsn)
    code, report = run_check(cli, config, "--only", "connections")
    assert code == 0
    assert [c["name"] for c in report["targets"][0]["checks"]] == ["connection", "connections"]
    _, report = run_check(cli, config, "--skip", "connections", "--skip", "wraparound")
    assert not {"connections", "wraparound"} & set(checks_of(report))
    unknown = cli("--config", str(config), "check", "--only", "nonsense", "-f", "nagios")
    assert unknown.exit_code == 3
    assert unknown.stdout.startswith("AEGISCTL UNKNOWN - unknown check 'nonsense'")
    skipped_in_config = config_for(write_config, db_dsn, skip=["wraparound"])
    assert "wraparound" not in checks_of(run_check(cli, skipped_in_config)[1])
    listing = json.loads(cli("--config", str(config), "check", "--list", "-f", "json").stdout)
    names = [c["name"] for c in listing["checks"]]
    assert names[0] == "connection" and "replication_lag" in names and "backup_age" in names


def test_another_module_registers_a_check(cli, write_config, db_dsn) -> None:
    @register_check("test_jobs", "a check added by another module")
    def test_jobs(ctx: CheckContext) -> list[CheckResult]:
        age = float(ctx.one("SELECT 7200")[0])
        return [grade("job:nightly", age, 3600, 86400, unit="s", message="last success 2h ago")]

    try:
        code, report = run_check(cli, config_for(write_config, db_dsn), "--only", "test_jobs")
        job = checks_of(report)["job:nightly"]
        assert (code, job["status"], job["value"]) == (1, "WARNING", 7200)
    finally:
        from aegisctl.diagnostics import checks

        checks._REGISTRY.pop("test_jobs")
    assert "test_jobs" not in registered_checks()
    assert Status.UNKNOWN.value == 3


# ---------------------------------------------------------------------------------------------
# A real streaming standby


def _pair_config(write_config: Any, pair: Pair, **checks: Any) -> Path:
    return write_config({"targets": {"primary": {"dsn": pair.primary_uri()},
                                     "replica": {"dsn": pair.standby_uri(), "role": "replica"}},
                         "default_target": "primary", "checks": checks})


def _role_exists(uri: str) -> bool:
    with psycopg.connect(uri) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'diag_watcher'").fetchone() \
            is not None


def test_replication_on_both_sides(cli, write_config, replica_pair: Pair) -> None:
    config = _pair_config(write_config, replica_pair)
    primary = json.loads(cli("--config", str(config), "diag", "replication", "-f", "json").stdout)
    assert primary["role"] == "primary"
    [replica] = primary["sections"]["replicas"]
    assert replica["state"] == "streaming"
    assert primary["sections"]["receiver"] == []
    standby = json.loads(cli("--config", str(config), "--target", "replica", "diag", "replication",
                             "-f", "json").stdout)
    assert standby["role"] == "standby"
    assert standby["sections"]["summary"]["role"] == "standby"
    [receiver] = standby["sections"]["receiver"]
    assert receiver["status"] == "streaming"
    assert standby["sections"]["replicas"] == []
    # Without pg_read_all_stats the replication views hide their details: said in one line.
    exec_(replica_pair.primary_uri(), "DROP ROLE IF EXISTS diag_watcher",
          "CREATE ROLE diag_watcher LOGIN")
    try:
        for uri, target in ((replica_pair.primary_uri(), "primary"),
                            (replica_pair.standby_uri(), "replica")):
            watcher = write_config({"targets": {target: {"dsn": uri.replace(
                "postgresql://postgres@", "postgresql://diag_watcher@")}}}, name="watcher.yaml")
            wait_for(lambda u=uri: _role_exists(u), what="the role on the standby")
            ran = cli("--config", str(watcher), "diag", "replication", "-f", "json")
            assert ran.exit_code == 0, ran.output
            out = json.loads(ran.stdout)
            assert out["errors"] == {}
            assert any("pg_read_all_stats" in n for n in out["notes"]), (target, out)
    finally:
        exec_(replica_pair.primary_uri(), "DROP ROLE IF EXISTS diag_watcher")
    # The configured role is checked against the server's (a failover shows up).
    code, report = run_check(cli, config, "--all-targets", "--only", "role")
    assert code == 0 and [t["status"] for t in report["targets"]] == ["OK", "OK"]
    swapped = write_config({"targets": {"old-replica": {"dsn": replica_pair.primary_uri(),
                                                        "role": "replica"}}}, name="swapped.yaml")
    code, report = run_check(cli, swapped, "--only", "role")
    assert code == 1 and "configured as replica but the server is a primary" in \
        checks_of(report)["role"]["message"]
    # Every diagnostic runs on a standby too (read-only, nothing fails).
    for topic in ("activity", "locks", "size", "cache", "indexes", "vacuum", "settings"):
        out = json.loads(cli("--config", str(config), "--target", "replica", "diag", topic,
                             "-f", "json").stdout)
        assert out["errors"] == {}, (topic, out["errors"])


def test_standby_with_lag_is_reported_by_check(cli, write_config, replica_pair: Pair) -> None:
    primary_dsn, standby_dsn = replica_pair.primary_uri(), replica_pair.standby_uri()
    exec_(primary_dsn, "CREATE TABLE IF NOT EXISTS ticks (at timestamptz)",
          "INSERT INTO ticks VALUES (now())")
    with psycopg.connect(standby_dsn, autocommit=True) as standby, \
            psycopg.connect(primary_dsn, autocommit=True) as primary:
        lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        wait_for(lambda: standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                         (lsn,)).fetchone() == (True,), what="replay")
        config = _pair_config(write_config, replica_pair,
                              replication_lag_seconds={"warning": 1, "critical": 2})
        code, report = run_check(cli, config, "--only", "replication_lag", target="replica")
        assert (code, checks_of(report)["replication_lag"]["status"]) == (0, "OK")
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            time.sleep(0.5)
            primary.execute("INSERT INTO ticks VALUES (now())")
            time.sleep(2.6)
            code, report = run_check(cli, config, "--only", "replication_lag", target="replica")
            lag = checks_of(report)["replication_lag"]
            assert (code, lag["status"]) == (2, "CRITICAL"), lag
            assert lag["value"] > 2 and "paused" in lag["message"]
            lagging = json.loads(cli("--config", str(config), "--target", "replica", "diag",
                                     "replication", "-f", "json").stdout)
            assert lagging["sections"]["summary"]["replay_lag_seconds"] > 2
            assert lagging["sections"]["summary"]["replay_lag_bytes"] > 0
            # --all-targets checks the primary and the replica in one run.
            code, both = run_check(cli, config, "--all-targets", "--only", "replication_lag")
            assert [t["target"] for t in both["targets"]] == ["primary", "replica"]
            assert [t["role"] for t in both["targets"]] == ["primary", "standby"]
            assert both["targets"][1]["status"] == "CRITICAL" and code == 2
            nagios = cli("--config", str(config), "check", "--all-targets", "--only",
                         "replication_lag", "--format", "nagios").stdout
            assert "'replica/replication_lag'=" in nagios
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


def test_query_text_in_messages_is_inert(cli, write_config, db_dsn, background: Background) -> None:
    idle = background.connect(db_dsn, autocommit=False)
    idle.execute("SELECT '\x1b[2J | evil=1;2;3' AS x")
    time.sleep(1.2)
    config = config_for(write_config, db_dsn, long_transaction_seconds={"warning": 1, "critical": 60})
    result = cli("--config", str(config), "check", "--only", "long_transactions", "-f", "nagios")
    assert result.exit_code == 1
    first = result.stdout.split("\n")[0]
    assert "\x1b" not in result.stdout and "\\x1b[2J" in first
    assert first.count("|") == 1  # only the perfdata separator
    table = cli("--config", str(config), "check", "--only", "long_transactions")
    assert "\x1b" not in table.stdout
    idle.rollback()
