"""Cluster targets on a real Patroni cluster (two members, etcd): each command finds the member
it needs from /cluster, confirms the role on its own connection, and follows a switchover and a
kill -9 failover. One cluster for the whole module (see patroni_fixtures.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from patroni_fixtures import PatroniCluster, patroni_cluster  # noqa: F401

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
    with patroni_cluster.leader().connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
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
    result = cli("--config", str(config), "schema", "init", "--embedding-dim", "8")
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


def test_commands_follow_a_kill_9_failover(
        aegis_database: PatroniCluster, cli: Any, write_config: Callable[..., Path]) -> None:
    cluster = aegis_database
    config = write_config(_config(cluster))
    before = _status(cli, config)
    _old, new = cluster.kill_leader()
    status = _status(cli, config)
    assert status["leader"] == new.name and status["writes"]["member"] == new.name
    assert status["writes"]["timeline"] > before["writes"]["timeline"]
    result = cli("--config", str(config), "schema", "migrate")
    assert result.exit_code == 0, result.output
