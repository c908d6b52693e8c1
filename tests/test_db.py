"""Connections carry who we are and the limits of the kind of work; retries only when they help."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from conftest import dsn_of

from aegisctl.config import load_config
from aegisctl.db import connect, is_transient
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


def test_permanent_errors_are_not_transient(empty_db) -> None:
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(dsn_of(empty_db, "no_such_database"))
    assert not is_transient(err.value)
    empty_db.autocommit = True
    with pytest.raises(psycopg.errors.UndefinedTable) as undefined:
        empty_db.execute("SELECT * FROM no_such_table")
    assert not is_transient(undefined.value)
