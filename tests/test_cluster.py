"""Cluster targets on a real Patroni cluster (two members, etcd): each command finds the member
it needs from /cluster, confirms the role on its own connection, and follows a switchover and a
kill -9 failover. One cluster for the whole module (see patroni_fixtures.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from patroni_fixtures import PatroniCluster, patroni_cluster, wait_for  # noqa: F401

pytestmark = pytest.mark.slow

DB = "aegis"


def _config(cluster: PatroniCluster, **patroni: Any) -> dict[str, Any]:
    return {
        "targets": {"cluster": {
            "dsn": "postgresql://postgres@{host}:{port}/" + DB,
            "patroni": {"urls": cluster.urls, **patroni},
        }},
        "connection": {"retry": {"attempts": 1}},
    }


@pytest.fixture(scope="module")
def aegis_database(patroni_cluster: PatroniCluster) -> PatroniCluster:  # noqa: F811
    from aegisctl.config import SchemaSettings
    from aegisctl.schema import init_schema

    with patroni_cluster.leader().connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    with patroni_cluster.leader().connect(DB) as conn:
        init_schema(conn, SchemaSettings(embedding_dim=8), wait_lock=60)
    return patroni_cluster


def _status(cli: Any, config: Path) -> dict[str, Any]:
    result = cli("--config", str(config), "cluster", "status", "--format", "json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_status_names_the_leader_for_writes_and_a_replica_for_reads(
        aegis_database: PatroniCluster, cli: Any, write_config: Callable[..., Path]) -> None:
    cluster = aegis_database
    config = write_config(_config(cluster))
    leader, replica = cluster.leader(), cluster.replica()
    status = _status(cli, config)
    assert status["kind"] == "patroni" and status["leader"] == leader.name
    assert {m["name"]: m["role"] for m in status["members"]} == {
        leader.name: "leader", replica.name: "replica"}
    assert status["writes"]["member"] == leader.name
    assert status["writes"]["in_recovery"] is False
    assert status["reads"]["member"] == replica.name
    assert status["reads"]["in_recovery"] is True
    table = cli("--config", str(config), "cluster", "status")
    assert table.exit_code == 0 and leader.name in table.stdout and "aegisctl would use" in table.stdout

    # A lag bound no replica can meet: reads fall back to the leader.
    config = write_config(_config(cluster, max_lag="0B"), name="strict.yaml")
    with leader.connect(DB) as conn:  # some WAL the replica has to catch up on
        conn.execute("CREATE TABLE IF NOT EXISTS lag_probe (x int)")
    status = _status(cli, config)
    assert status["reads"]["member"] in (replica.name, leader.name)


def test_writes_go_to_the_leader_and_follow_a_switchover(
        aegis_database: PatroniCluster, cli: Any, write_config: Callable[..., Path]) -> None:
    cluster = aegis_database
    config = write_config(_config(cluster))
    result = cli("--config", str(config), "schema", "migrate")
    assert result.exit_code == 0, result.output

    old, new = cluster.switchover()
    status = _status(cli, config)
    assert status["writes"]["member"] == new.name and status["reads"]["member"] == old.name
    result = cli("--config", str(config), "schema", "migrate")
    assert result.exit_code == 0, result.output
    with new.connect(DB) as conn:
        row = conn.execute("SELECT pg_is_in_recovery(), count(*) FROM episodic_memory").fetchone()
    assert row == (False, 0)


def test_a_member_that_is_not_the_leader_is_refused_on_its_own_connection(
        aegis_database: PatroniCluster, cli: Any, write_config: Callable[..., Path]) -> None:
    """/cluster can trail the truth: whatever it says, a write never goes to a server in
    recovery. Here the leader's name is mapped (wrongly) to the replica's DSN."""
    cluster = aegis_database
    leader, replica = cluster.leader(), cluster.replica()
    config = write_config(_config(cluster, members={leader.name: replica.dsn(DB),
                                                    replica.name: replica.dsn(DB)}))
    result = cli("--config", str(config), "schema", "migrate")
    assert result.exit_code == 5, result.output
    assert f"member '{leader.name}' is not the leader" in result.stderr
    assert "nothing was written" in result.stderr


def test_a_multi_host_dsn_picks_the_same_members_without_a_rest_api(
        aegis_database: PatroniCluster, cli: Any, write_config: Callable[..., Path]) -> None:
    cluster = aegis_database
    leader, replica = cluster.leader(), cluster.replica()
    # The replica first: libpq must skip it for writes.
    dsn = (f"host=127.0.0.1,127.0.0.1 port={replica.pg_port},{leader.pg_port} "
           f"user=postgres dbname={DB}")
    config = write_config({"targets": {"ha": {"dsn": dsn}},
                           "connection": {"retry": {"attempts": 1}}})
    status = _status(cli, config)
    assert status["kind"] == "multi-host"
    assert status["writes"]["server"] == f"127.0.0.1:{leader.pg_port}"
    assert status["writes"]["in_recovery"] is False
    assert status["reads"]["server"] == f"127.0.0.1:{replica.pg_port}"
    result = cli("--config", str(config), "schema", "migrate")
    assert result.exit_code == 0, result.output


def test_scheduled_jobs_run_only_where_the_member_leads(
        aegis_database: PatroniCluster, cli: Any, write_config: Callable[..., Path]) -> None:
    """The same job on every member's host: it runs where the member leads, is recorded
    "skipped" (exit 0, not failed) elsewhere and while the cluster is paused, and its freshness
    counts the leader's runs from any host."""
    cluster = aegis_database
    leader, replica = cluster.leader(), cluster.replica()

    def host_config(member: Any) -> Path:
        config = _config(cluster, local_url=member.api_url)
        config["schedule"] = {"probe": {"command": "health", "every": "5m"}}
        return write_config(config, name=f"{member.name}.yaml")

    def run_on(member: Any) -> dict[str, Any]:
        result = cli("--config", str(host_config(member)), "jobs", "run", "probe",
                     "--format", "json")
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.stdout))

    ran = run_on(leader)
    assert ran["status"] == "succeeded" and ran["recorded_in"] == "database"
    skipped = run_on(replica)
    assert skipped["status"] == "skipped" and skipped["exit_code"] == 0
    assert skipped["error"].startswith(f"not leader: this host's member {replica.name} is replica")
    assert skipped["recorded_in"] == "database"  # in the history on the leader

    paused = cluster.patronictl("pause", "--wait")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    try:
        wait_for("the pause to show", lambda: cluster.cluster().get("pause") is True, 30)
        held = run_on(leader)
        assert held["status"] == "skipped" and held["error"].startswith("cluster paused")
    finally:
        resumed = cluster.patronictl("resume", "--wait")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    history = cli("--config", str(host_config(replica)), "jobs", "history", "--format", "json")
    assert history.exit_code == 0, history.output
    statuses = sorted(r["status"] for r in json.loads(history.stdout)["runs"]
                      if r["job"] == "probe")
    assert statuses == ["skipped", "skipped", "succeeded"]
    fresh = cli("--config", str(host_config(replica)), "jobs", "status", "--format", "json")
    assert fresh.exit_code == 0, fresh.output
    (probe,) = [j for j in json.loads(fresh.stdout)["jobs"] if j["job"] == "probe"]
    assert probe["status"] == "OK" and probe["last_run_status"] == "succeeded"


CLUSTER_CHECKS = "cluster_leader,cluster_paused,cluster_pending_restart,cluster_switchover,"\
    "cluster_timeline,cluster_lag"


def test_check_reports_the_cluster_per_member(
        aegis_database: PatroniCluster, cli: Any, write_config: Callable[..., Path],
        tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    cluster = aegis_database
    leader, replica = cluster.leader(), cluster.replica()
    config = str(write_config(_config(cluster)))
    prom = tmp_path / "aegisctl.prom"
    result = cli("--config", config, "check", "--only", CLUSTER_CHECKS, "--format", "json",
                 "--prometheus", str(prom))
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads(result.stdout)["targets"][0]["checks"]}
    assert checks["cluster_leader"]["status"] == "OK"
    assert leader.name in checks["cluster_leader"]["message"]
    lag = checks[f"cluster_lag:{replica.name}"]
    assert lag["status"] == "OK" and lag["labels"] == {"member": replica.name}
    assert lag["unit"] == "B" and lag["value"] is not None
    samples = [s for f in text_string_to_metric_families(prom.read_text())
               for s in f.samples if s.name == "aegisctl_cluster_member_lag_bytes"]
    assert [(s.labels["member"], s.labels["target"]) for s in samples] == [
        (replica.name, "cluster")]
    nagios = cli("--config", config, "check", "--only", CLUSTER_CHECKS, "--format", "nagios")
    assert nagios.exit_code == 0, nagios.output
    perfdata = nagios.stdout.splitlines()[0].split(" | ", 1)[1]
    assert f"'cluster_lag:{replica.name}'=" in perfdata

    paused = cluster.patronictl("pause", "--wait")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    try:
        wait_for("the pause to show", lambda: cluster.cluster().get("pause") is True, 30)
        result = cli("--config", config, "check", "--only", CLUSTER_CHECKS, "--format", "json")
        assert result.exit_code == 1, result.output  # WARNING
        checks = {c["name"]: c for c in json.loads(result.stdout)["targets"][0]["checks"]}
        assert checks["cluster_paused"]["status"] == "WARNING"
        assert "no automatic failover" in checks["cluster_paused"]["message"]
    finally:
        resumed = cluster.patronictl("resume", "--wait")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr


def test_a_switchover_mid_cleanup_stops_it_with_exit_5_and_the_next_run_finishes(
        aegis_database: PatroniCluster, write_config: Callable[..., Path],
        clean_env: Path) -> None:
    """Between batches the role is proven again: a switchover in the middle of a cleanup run
    stops it (exit 5, one line), nothing is written to the demoted member, and the next run
    deletes what is left on the new leader."""
    cluster = aegis_database
    with cluster.leader().connect(DB) as conn:
        conn.execute("DROP TABLE IF EXISTS events")
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, ts timestamptz NOT NULL)")
        conn.execute("INSERT INTO events SELECT g, now() - interval '30 days' "
                     "FROM generate_series(1, 20000) g")
        conn.execute("INSERT INTO events SELECT g, now() FROM generate_series(20001, 20100) g")
        conn.execute("CREATE INDEX ON events (ts)")
        conn.execute("ANALYZE events")
    config = _config(cluster)
    config["cleanup"] = {"batch_size": 200, "min_batch_size": 100, "pause": "0.1s",
                         "vacuum": False, "archive_dir": str(clean_env / "archive"),
                         "policies": {"events": {"table": "events", "column": "ts",
                                                 "max_age": "7d"}}}
    path = write_config(config)
    exe = Path(sys.executable).with_name("aegisctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGISCTL_", "PG"))}
    run = subprocess.Popen([str(exe), "--config", str(path), "cleanup", "run", "--yes"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        def started() -> bool:
            with cluster.leader().connect(DB) as conn:
                row = conn.execute("SELECT count(*) FROM events").fetchone()
            return row is not None and row[0] < 19000
        wait_for("the first cleanup batches", started, 60, every=0.2)
        assert run.poll() is None, "the cleanup finished before the switchover"
        _old, new = cluster.switchover()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 5, out + err
    lines = [ln for ln in err.splitlines() if ln.startswith("aegisctl: error:")]
    assert len(lines) == 1 and "leader" in lines[0] and "nothing more was written" in lines[0]
    with new.connect(DB) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None and 100 < row[0] < 20100  # stopped part-way
    done = subprocess.run([str(exe), "--config", str(path), "cleanup", "run", "--yes"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with new.connect(DB) as conn:
        row = conn.execute("SELECT count(*), min(id) FROM events").fetchone()
    assert row == (100, 20001)


def _replayed(cluster: PatroniCluster) -> bool:
    leader, replica = cluster.leader(), cluster.replica()
    with leader.connect() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    with replica.connect() as conn:
        done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                            (row[0] if row else "0/0",)).fetchone()
    return bool(done and done[0])


def test_a_dump_on_a_replica_cancelled_by_recovery_is_taken_from_the_leader(
        aegis_database: PatroniCluster, write_config: Callable[..., Path],
        tmp_path: Path, clean_env: Path) -> None:
    """backup.source: replica, with hot_standby_feedback off there (said before dumping): the
    leader vacuums away rows the dump's snapshot needs, replay cancels the dump, and the backup
    is taken from the leader instead, with one line saying so."""
    cluster = aegis_database
    leader, replica = cluster.leader(), cluster.replica()
    with leader.connect(DB) as conn:
        conn.execute("DROP TABLE IF EXISTS churn")
        conn.execute("CREATE TABLE churn (id int, pad text) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO churn SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g")
    edited = cluster.patronictl("edit-config", "--force", "-p", "hot_standby_feedback=off",
                                "-p", "max_standby_streaming_delay=0")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    try:
        def feedback_off() -> bool:
            with replica.connect() as conn:
                row = conn.execute("SELECT current_setting('hot_standby_feedback'), "
                                   "current_setting('max_standby_streaming_delay')").fetchone()
            return row == ("off", "0")
        wait_for("the replica to reload its settings", feedback_off, 60)
        config = _config(cluster)
        config["backup"] = {"source": "replica", "directory": str(tmp_path / "backups")}
        path = write_config(config)
        pause = tmp_path / "paused"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGISCTL_", "PG"))}
        env.update(AEGISCTL_TEST_PAUSE_AT="create.pg_dump", AEGISCTL_TEST_PAUSE_FILE=str(pause))
        exe = Path(sys.executable).with_name("aegisctl")
        run = subprocess.Popen([str(exe), "--config", str(path), "backup", "create",
                                "--format", "json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
        try:
            wait_for("the dump to start on the replica", pause.exists, 60, every=0.1)
            with leader.connect(DB) as conn:
                conn.execute("DELETE FROM churn")
                conn.execute("VACUUM churn")
            wait_for("the replica to replay the vacuum", lambda: _replayed(cluster), 60)
            pause.unlink()
            # The dump again, on the leader this time: the same step pauses once more.
            wait_for("the dump to start again", pause.exists, 120, every=0.1)
            pause.unlink()
            out, err = run.communicate(timeout=180)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, out + err
        assert f"member '{replica.name}' has hot_standby_feedback off" in err
        assert f"the dump on replica '{replica.name}' was cancelled by a conflict with " \
            "recovery" in err
        assert "dumping from the leader instead" in err
        manifest = json.loads(out)
        assert manifest["database"] == DB and manifest["verification"]["status"] == "ok"
    finally:
        restored = cluster.patronictl("edit-config", "--force", "-p", "hot_standby_feedback=on",
                                      "-p", "max_standby_streaming_delay=30s")
        assert restored.returncode == 0, restored.stdout + restored.stderr


def test_commands_follow_a_kill_9_failover(
        aegis_database: PatroniCluster, cli: Any, write_config: Callable[..., Path]) -> None:
    cluster = aegis_database
    config = write_config(_config(cluster))
    before = _status(cli, config)
    first = cli("--config", str(config), "check", "--only", "cluster_timeline")
    assert first.exit_code == 0, first.output
    _old, new = cluster.kill_leader()
    status = _status(cli, config)
    assert status["leader"] == new.name and status["writes"]["member"] == new.name
    assert status["writes"]["timeline"] > before["writes"]["timeline"]
    result = cli("--config", str(config), "schema", "migrate")
    assert result.exit_code == 0, result.output
    # `check` says the timeline moved since its previous run.
    after = cli("--config", str(config), "check", "--only", "cluster_timeline", "--format",
                "json")
    assert after.exit_code == 1, after.output
    (timeline,) = [c for c in json.loads(after.stdout)["targets"][0]["checks"]
                   if c["name"] == "cluster_timeline"]
    assert timeline["status"] == "WARNING"
    assert (f"timeline {before['writes']['timeline']} -> {status['writes']['timeline']}"
            in timeline["message"])
