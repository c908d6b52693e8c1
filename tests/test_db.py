"""Connections carry who we are and the limits of the kind of work; retries only when they help."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from conftest import dsn_of

from aegisctl.config import load_config
from aegisctl.db import connect, is_transient, run_transaction
from aegisctl.targets import resolve_target


def test_application_name_and_timeouts_by_kind(clean_env, db_config: Path) -> None:
    loaded = load_config(str(db_config))
    target = resolve_target(loaded)
    with connect(loaded, target, "backup create", "query") as conn:
        row = conn.execute("SELECT current_setting('application_name'),"
                           " current_setting('statement_timeout'),"
                           " current_setting('lock_timeout')").fetchone()
        assert row == ("aegisctl backup create", "1min", "5s")
    with connect(loaded, target, "schema migrate", "ddl") as conn:
        row = conn.execute("SELECT current_setting('statement_timeout'),"
                           " current_setting('lock_timeout')").fetchone()
        assert row == ("0", "10s")


def test_serialization_failure_is_retried(clean_env, db_config: Path, empty_db) -> None:
    """Two serializable transactions with a write skew: the loser is replayed and succeeds."""
    empty_db.autocommit = True
    empty_db.execute("CREATE TABLE oncall (name text PRIMARY KEY, on_duty bool NOT NULL)")
    empty_db.execute("INSERT INTO oncall VALUES ('a', true), ('b', true)")
    loaded = load_config(str(db_config))
    settings = loaded.settings
    settings.connection.retry.attempts = 5
    settings.connection.retry.initial_delay = 0.05
    target = resolve_target(loaded)
    attempts: list[str] = []
    both_read = threading.Barrier(2, timeout=10)

    def go_off_duty(name: str) -> None:
        with connect(loaded, target, "test") as conn:
            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE

            def work(c: psycopg.Connection) -> None:
                attempts.append(name)
                (count,) = c.execute("SELECT count(*) FROM oncall WHERE on_duty").fetchone()
                if len(attempts) <= 2:
                    both_read.wait()  # the first round: both read before either writes
                if count > 1:
                    c.execute("UPDATE oncall SET on_duty = false WHERE name = %s", (name,))

            run_transaction(conn, work, settings)

    threads = [threading.Thread(target=go_off_duty, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One transaction was aborted with a serialization failure and replayed: three attempts,
    # and the invariant (someone stays on duty) holds.
    assert len(attempts) == 3
    (on_duty,) = empty_db.execute("SELECT count(*) FROM oncall WHERE on_duty").fetchone()
    assert on_duty == 1


def test_permanent_errors_are_not_transient(empty_db) -> None:
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(dsn_of(empty_db, "no_such_database"))
    assert not is_transient(err.value)
    empty_db.autocommit = True
    with pytest.raises(psycopg.errors.UndefinedTable) as undefined:
        empty_db.execute("SELECT * FROM no_such_table")
    assert not is_transient(undefined.value)
