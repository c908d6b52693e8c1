"""Through a real PgBouncer: settings per transaction, pooler detection, prepared statements
off, and session work refused (or sent to direct_dsn)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pooler_fixtures import (
    PgBouncer,
    clone_database,
    direct_dsn,
    drop_database,
    start_pgbouncer,
)
from prometheus_client.parser import text_string_to_metric_families

from aegisctl import pooler
from aegisctl.config import load_config
from aegisctl.db import connect, require_session
from aegisctl.errors import ConfigError
from aegisctl.targets import resolve_target

DATABASE = "aegis_pooler_core"


@pytest.fixture(scope="module")
def bouncer(pg_server: Any, schema_template: Any) -> Iterator[PgBouncer]:
    clone_database(pg_server, schema_template.template_dbname, DATABASE)
    running = start_pgbouncer(pg_server.host, pg_server.port, pg_server.user,
                              pg_server.password, DATABASE)
    try:
        yield running
    finally:
        running.stop()
        drop_database(pg_server, DATABASE)


@pytest.fixture
def config(write_config: Callable[..., Path], bouncer: PgBouncer, pg_server: Any,
           clean_env: Path) -> Callable[..., Any]:
    """load_config for a target 'pooled' on the given PgBouncer database alias."""

    def make(alias: str = "tx", **target: Any) -> Any:
        pooler.forget()
        path = write_config({
            "targets": {"pooled": {"dsn": bouncer.dsn(alias), **target}},
            "connection": {"retry": {"attempts": 1},
                           "timeouts": {"query": {"statement_timeout": "300ms",
                                                  "lock_timeout": "200ms"}}}})
        loaded = load_config(str(path))
        return loaded, resolve_target(loaded)

    return make


def _server_setting(bouncer: PgBouncer, name: str) -> list[str]:
    """The setting on every server connection of the transaction pool (both of them are
    taken at once by two open transactions)."""
    seen = []
    first = psycopg.connect(bouncer.dsn("tx"), prepare_threshold=None)
    second = psycopg.connect(bouncer.dsn("tx"), prepare_threshold=None)
    try:
        for conn in (first, second):
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            assert row is not None
            seen.append(str(row[0]))
    finally:
        first.close()
        second.close()
    return seen


def test_statement_timeout_cancels_through_a_transaction_pooler(
        config: Callable[..., Any], bouncer: PgBouncer) -> None:
    loaded, target = config("tx")
    with connect(loaded, target, "diag activity") as conn:
        assert pooler.per_transaction(conn)
        assert conn.prepare_threshold is None
        # autocommit: the statement's own implicit transaction carries the timeout
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        # an explicit transaction: its first statement carries it
        with pytest.raises(psycopg.errors.QueryCanceled), conn.transaction():
            conn.execute("SELECT 1")
            conn.execute("SELECT pg_sleep(5)")
        # and a statement that fits runs
        row = conn.execute("SELECT 41 + 1").fetchone()
        assert row is not None and row[0] == 42
    with connect(loaded, target, "backup list", autocommit=False) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        conn.rollback()
    # Nothing leaked onto the shared server connections.
    assert _server_setting(bouncer, "statement_timeout") == ["0", "0"]
    assert _server_setting(bouncer, "lock_timeout") == ["0", "0"]


def test_lock_timeout_applies_through_a_transaction_pooler(
        config: Callable[..., Any], bouncer: PgBouncer, pg_server: Any) -> None:
    loaded, target = config("tx")
    with psycopg.connect(direct_dsn(pg_server, DATABASE)) as holder:
        holder.execute("LOCK TABLE episodic_memory IN ACCESS EXCLUSIVE MODE")
        with connect(loaded, target, "memory recent") as conn, \
                pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("SELECT count(*) FROM episodic_memory")
        holder.rollback()


def test_prepared_statements_do_not_collide_on_shared_server_connections(
        config: Callable[..., Any]) -> None:
    loaded, target = config("tx")
    # psycopg prepares a statement from its 5th run; two clients sharing the pool's server
    # connections would then meet each other's "_pg3_0".
    with connect(loaded, target, "memory search") as one, \
            connect(loaded, target, "memory search") as two:
        for n in range(12):
            for conn in (one, two):
                row = conn.execute("SELECT %s::int * 2", (n,)).fetchone()
                assert row is not None and row[0] == n * 2


def test_pooler_is_found_once_and_said_with_verbose(
        config: Callable[..., Any], caplog: pytest.LogCaptureFixture, pg_server: Any) -> None:
    caplog.set_level("INFO", logger="aegisctl")
    loaded, target = config("tx")
    with connect(loaded, target, "health"), connect(loaded, target, "health"):
        pass
    found = [r.getMessage() for r in caplog.records if r.name == "aegisctl.pooler"]
    assert found == ["target 'pooled' (dsn): a transaction pooler (server connections change "
                     "between transactions): settings per transaction, no prepared statements"]
    caplog.clear()
    loaded, target = config("sess")
    with connect(loaded, target, "health") as conn:
        assert not pooler.per_transaction(conn)
        row = conn.execute("SHOW statement_timeout").fetchone()
        assert row is not None and row[0] == "300ms"
    assert "a session pooler" in caplog.text
    caplog.clear()
    pooler.forget()
    loaded, target = config("tx")
    target.dsn = direct_dsn(pg_server, DATABASE)
    with connect(loaded, target, "health") as conn:
        assert not pooler.per_transaction(conn)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("200ms",)
    assert "no connection pooler" in caplog.text


def test_session_work_is_refused_through_a_transaction_pooler(
        config: Callable[..., Any], pg_server: Any) -> None:
    loaded, target = config("tx")
    with pytest.raises(ConfigError) as refused:
        require_session(loaded, target, "schema migrate")
    assert str(refused.value) == ("target 'pooled' goes through a transaction pooler; set "
                                  "targets.pooled.direct_dsn for schema migrate")
    with pytest.raises(ConfigError):
        connect(loaded, target, "maint vacuum", "maintenance")
    # A session pooler keeps sessions, but replication does not pass through it.
    loaded, target = config("sess")
    require_session(loaded, target, "schema migrate")
    with pytest.raises(ConfigError) as refused:
        require_session(loaded, target, "backup wal stream", "direct")
    assert str(refused.value) == ("target 'pooled' goes through a session pooler; set "
                                  "targets.pooled.direct_dsn for backup wal stream")
    # With direct_dsn, session work goes there, and the rest stays on the pooler.
    loaded, target = config("tx", direct_dsn=direct_dsn(pg_server, DATABASE))
    require_session(loaded, target, "schema migrate")
    with connect(loaded, target, "maint vacuum", "maintenance") as conn:
        assert not pooler.per_transaction(conn)
        conn.execute("VACUUM episodic_memory")
    with connect(loaded, target, "diag activity") as conn:
        assert pooler.per_transaction(conn)


def test_configured_pooler_skips_detection(config: Callable[..., Any]) -> None:
    loaded, target = config("sess", pooler="transaction")
    with connect(loaded, target, "health") as conn:
        assert pooler.per_transaction(conn)
    with pytest.raises(ConfigError, match="transaction pooler"):
        require_session(loaded, target, "schema migrate")


def test_pool_state_is_read_from_the_admin_console(bouncer: PgBouncer) -> None:
    from aegisctl.diagnostics.pooler_checks import read_pools

    # Both server connections held by open transactions, a third client queued behind them.
    holders = [psycopg.connect(bouncer.dsn("tx"), prepare_threshold=None) for _ in range(2)]
    for conn in holders:
        conn.execute("SELECT 1")
    waiter = psycopg.connect(bouncer.dsn("tx"), autocommit=True, prepare_threshold=None)
    queued = threading.Thread(target=lambda: waiter.execute("SELECT 1"))
    queued.start()
    try:
        deadline = time.monotonic() + 10
        while (state := read_pools(bouncer.dsn("pgbouncer"), "tx", 5)).clients_waiting < 1:
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        time.sleep(0.2)
        state = read_pools(bouncer.dsn("pgbouncer"), "tx", 5)
        assert state.error is None
        assert (state.clients_waiting, state.servers_active, state.pool_size) == (1, 2, 2)
        assert state.max_wait_s > 0
    finally:
        for conn in holders:
            conn.rollback()
            conn.close()
        queued.join(timeout=10)
        waiter.close()
    assert read_pools(bouncer.dsn("pgbouncer"), "tx", 5).clients_waiting == 0


def test_check_reports_the_pools_in_every_format(
        cli: Any, write_config: Callable[..., Path], bouncer: PgBouncer, tmp_path: Path) -> None:
    config = write_config({
        "targets": {"pooled": {"dsn": bouncer.dsn("tx"),
                               "pgbouncer_admin_dsn": bouncer.dsn("pgbouncer")}},
        "connection": {"retry": {"attempts": 1}},
        "checks": {"pooler_server_used_pct": {"warning": 40, "critical": 90}}})
    only = ["--only", "pooler_clients_waiting,pooler_max_wait,pooler_server_connections"]
    holder = psycopg.connect(bouncer.dsn("tx"), prepare_threshold=None)
    holder.execute("SELECT 1")  # one of the two server connections in use
    try:
        result = cli("--config", str(config), "check", *only, "--format", "json")
        assert result.exit_code == 1, result.output
        checks = {c["name"]: c for c in json.loads(result.stdout)["targets"][0]["checks"]}
        assert checks["pooler_server_connections"]["status"] == "WARNING"
        assert checks["pooler_server_connections"]["value"] == 50.0
        assert "1 of 2 server connections in use" in \
            checks["pooler_server_connections"]["message"]
        assert (checks["pooler_clients_waiting"]["status"],
                checks["pooler_clients_waiting"]["value"]) == ("OK", 0)
        assert checks["pooler_max_wait"]["unit"] == "s"
        nagios = cli("--config", str(config), "check", *only, "--format", "nagios").stdout
        assert "pooler_server_connections=50%;40;90;0;100" in nagios
        assert nagios.startswith("AEGISCTL WARNING")
        prom = tmp_path / "aegisctl.prom"
        cli("--config", str(config), "check", *only, "--prometheus", str(prom))
        families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
        assert families["aegisctl_pgbouncer_server_connections_used_ratio"].samples[0].value \
            == 0.5
        assert families["aegisctl_pgbouncer_clients_waiting"].samples[0].value == 0
        assert "aegisctl_pgbouncer_max_wait_seconds" in families
        table = cli("--config", str(config), "check", *only).stdout
        assert "pooler_server_connections" in table
    finally:
        holder.rollback()
        holder.close()
    # An admin console that cannot be read is UNKNOWN, never OK; its password is not shown.
    config = write_config({
        "targets": {"pooled": {"dsn": bouncer.dsn("tx"), "pgbouncer_admin_dsn":
                               f"postgresql://nobody:pw@127.0.0.1:{bouncer.port}/pgbouncer"}},
        "connection": {"retry": {"attempts": 1}}})
    result = cli("--config", str(config), "check", *only, "--format", "json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["targets"][0]["checks"]}
    assert {c["status"] for n, c in checks.items() if n.startswith("pooler_")} == {"UNKNOWN"}
    assert "cannot read PgBouncer's admin console (postgresql://nobody:***@" in \
        checks["pooler_max_wait"]["message"]
