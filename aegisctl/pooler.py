"""Connection poolers on a target's dsn: what sits there (nothing, a session pooler or a
transaction pooler), found once per run, and how aegisctl's settings reach the server either way.

On a connection aegisctl owns for its whole life (no pooler, or a session pooler) the settings
are set once for the session. Through a transaction pooler each transaction may run on another
server connection, shared with other clients: a session `SET` would be lost for us and leak to
them, so the settings are set with `set_config(..., true)` (SET LOCAL) inside every transaction,
queued in the same pipeline as the transaction's first statement, so they cost no extra round
trip. Prepared statements are off there (they live on one server connection).

psycopg is imported inside the functions that connect; the classes below subclass psycopg's, so
this module is only imported by code that already connects (never by `aegisctl --help`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

log = logging.getLogger(__name__)

PoolerMode = Literal["none", "session", "transaction"]

# What each dsn turned out to be, found once per run (per process) and reused by every later
# connection of the run.
_found: dict[str, PoolerMode] = {}


def local_settings_statement(conn: psycopg.Connection[Any], settings: dict[str, str]) -> bytes:
    """One SELECT setting every value for the current transaction only."""
    return (sql.SQL("SELECT ") + sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
        for name, value in settings.items())).as_bytes(conn)


def session_settings_statement(settings: dict[str, str]) -> sql.Composed:
    return sql.SQL("SELECT ") + sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, false)").format(sql.Literal(name), sql.Literal(value))
        for name, value in settings.items())


def per_transaction(conn: psycopg.Connection[Any]) -> bool:
    """True when the connection goes through a transaction pooler: no session state (session
    SET, temporary tables kept across transactions, advisory locks) may be relied on."""
    return isinstance(conn, AegisConnection) and conn.aegis_local is not None


def override_settings(conn: psycopg.Connection[Any], override: dict[str, str] | None) -> None:
    """On a per-transaction connection, settings over its own for every later transaction
    (None: back to its own): what a session SET does on a connection of one's own."""
    if isinstance(conn, AegisConnection) and conn.aegis_settings is not None:
        conn.aegis_local = local_settings_statement(conn, {**conn.aegis_settings,
                                                           **(override or {})})


def session_set(conn: psycopg.Connection[Any], settings: dict[str, str]) -> None:
    """`SET name = value` for the rest of the connection's life: for the session on a
    connection of one's own, for every later transaction through a transaction pooler."""
    if isinstance(conn, AegisConnection) and conn.aegis_settings is not None:
        conn.aegis_settings.update(settings)
        override_settings(conn, None)
    else:
        conn.execute(session_settings_statement(settings))


def _owed(conn: psycopg.Connection[Any]) -> bytes | None:
    """The settings statement when the next statement opens a transaction (or is the first of
    an explicit one) on a per-transaction connection; None when they are in place."""
    if not isinstance(conn, AegisConnection) or conn.aegis_local is None:
        return None
    if conn.info.transaction_status == TransactionStatus.IDLE or conn.aegis_owed:
        conn.aegis_owed = False
        return conn.aegis_local
    return None


class PerTransactionCursor(psycopg.Cursor[Any]):
    """Sends the connection's settings ahead of the first statement of every transaction."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> PerTransactionCursor:
        owed = _owed(self.connection)
        if owed is None:
            super().execute(query, params, **kwargs)
            return self
        # One pipeline: the settings and the statement travel together and share the
        # statement's transaction (implicit in autocommit, or the one just begun). Inside the
        # caller's own pipeline they are simply queued: its sync ends the transaction.
        with _pipeline(self.connection):
            psycopg.Cursor(self.connection).execute(owed)
            super().execute(query, params, **kwargs)
        return self

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        owed = _owed(self.connection)
        if owed is None:
            return super().executemany(query, params_seq, **kwargs)
        with _pipeline(self.connection):
            psycopg.Cursor(self.connection).execute(owed)
            super().executemany(query, params_seq, **kwargs)
        return None

    @contextmanager
    def copy(self, statement: Any, params: Any = None, **kwargs: Any
             ) -> Iterator[psycopg.Copy]:
        conn = self.connection
        # COPY cannot be pipelined: an autocommit COPY gets a transaction of its own for the
        # settings to live in (one extra round trip, negligible beside a COPY).
        with conn.transaction() if conn.autocommit and \
                conn.info.transaction_status == TransactionStatus.IDLE else _nothing():
            owed = _owed(conn)
            if owed is not None:
                psycopg.Cursor(conn).execute(owed)
            with super().copy(statement, params, **kwargs) as copy:
                yield copy


def execute_with_settings(cur: psycopg.Cursor[Any], settings: dict[str, str], query: Any,
                          params: Any = None) -> psycopg.Cursor[Any]:
    """On a per-transaction connection, `query` with `settings` (SET LOCAL) on top of the
    connection's own, all in one set_config pipelined ahead of it: no extra round trip and no
    extra statement. Elsewhere, the settings in a transaction of their own with the query."""
    conn = cur.connection
    if not isinstance(conn, AegisConnection) or conn.aegis_settings is None \
            or conn.info.transaction_status != TransactionStatus.IDLE:
        with conn.transaction():
            psycopg.Cursor(conn).execute(local_settings_statement(conn, settings))
            psycopg.Cursor.execute(cur, query, params)
        return cur
    combined = local_settings_statement(conn, {**conn.aegis_settings, **settings})
    with conn.pipeline():
        psycopg.Cursor(conn).execute(combined)
        psycopg.Cursor.execute(cur, query, params)  # past the cursor's own settings
    return cur


class PerTransactionServerCursor(psycopg.ServerCursor[Any]):
    def execute(self, query: Any, params: Any = None, **kwargs: Any
                ) -> PerTransactionServerCursor:
        owed = _owed(self.connection)
        if owed is not None:
            psycopg.Cursor(self.connection).execute(owed)
        super().execute(query, params, **kwargs)
        return self


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _pipeline(conn: psycopg.Connection[Any]) -> Any:
    """A pipeline block, unless the connection is in one already."""
    from psycopg.pq import PipelineStatus

    if conn.info.pipeline_status != PipelineStatus.OFF:
        return _nothing()
    return conn.pipeline()


class AegisConnection(psycopg.Connection[Any]):
    """A psycopg connection that, once `use_per_transaction` is called, carries its settings
    into every transaction (see the module's docstring)."""

    aegis_local: bytes | None = None
    aegis_owed: bool = False
    aegis_settings: dict[str, str] | None = None

    def use_per_transaction(self, settings: dict[str, str]) -> None:
        self.aegis_settings = dict(settings)
        self.aegis_local = local_settings_statement(self, settings)
        self.prepare_threshold = None  # prepared statements live on one server connection
        self.cursor_factory = PerTransactionCursor
        self.server_cursor_factory = PerTransactionServerCursor

    @contextmanager
    def transaction(self, savepoint_name: str | None = None, force_rollback: bool = False
                    ) -> Iterator[psycopg.Transaction]:
        opens = self.aegis_local is not None and \
            self.info.transaction_status == TransactionStatus.IDLE
        with super().transaction(savepoint_name, force_rollback) as tx:
            if opens:
                self.aegis_owed = True  # paid with the block's first statement
            try:
                yield tx
            finally:
                if opens:
                    self.aegis_owed = False


def settle(conn: AegisConnection, key: str, configured: str, settings: dict[str, str],
           open_second: Callable[[], psycopg.Connection[Any]], where: str) -> PoolerMode:
    """Put the settings in place on a fresh connection, the way its pooler allows, and say
    what the pooler is. `configured` is the target's `pooler` (auto: found here, once per
    run per dsn); `open_second` opens another connection to the same dsn for that finding."""
    mode: PoolerMode | None = (cast("PoolerMode", configured) if configured != "auto"
                               else _found.get(key))
    if mode is None:
        mode = _detect(conn, settings, open_second)
        _found[key] = mode
        log.info("%s: %s", where, describe(mode))
        if mode == "none":
            return mode  # the detection's round trip already set the session settings
    if mode == "transaction":
        conn.use_per_transaction(settings)
    else:
        conn.execute(session_settings_statement(settings))
    return mode


def describe(mode: PoolerMode) -> str:
    return {"none": "no connection pooler (a direct connection)",
            "session": "a session pooler (each client keeps its server connection)",
            "transaction": "a transaction pooler (server connections change between "
                           "transactions): settings per transaction, no prepared statements"
            }[mode]


def _detect(conn: AegisConnection, settings: dict[str, str],
            open_second: Callable[[], psycopg.Connection[Any]]) -> PoolerMode:
    """A pooler hands the client a backend key of its own, so the pid libpq was told differs
    from the server's; the same round trip sets the session settings when they are equal.
    Behind a pooler, a value set for the session is looked for from a second client (a
    transaction pooler gives it the same, just released, server connection) and from this one
    again (a transaction pooler may have moved it)."""
    sets = sql.SQL(" || ").join(
        sql.SQL("set_config({}, {}, false)").format(sql.Literal(name), sql.Literal(value))
        for name, value in settings.items())
    row = conn.execute(sql.SQL("SELECT pg_backend_pid(), CASE WHEN pg_backend_pid() = {} "
                               "THEN {} END").format(sql.Literal(conn.info.backend_pid), sets)
                       ).fetchone()
    if row is not None and row[0] == conn.info.backend_pid:
        return "none"
    token = secrets.token_hex(8)
    probe = "aegisctl.pooler_probe"
    conn.execute("SELECT set_config(%s, %s, false)", (probe, token))
    try:
        with open_second() as other:
            seen = other.execute("SELECT current_setting(%s, true)", (probe,)).fetchone()
    except psycopg.OperationalError as exc:  # e.g. the pooler's max_client_conn reached
        log.info("pooler detection: no second connection (%s); assuming transaction pooling",
                 str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return "transaction"  # the safe assumption: nothing relies on the session
    if seen is not None and seen[0] == token:
        return "transaction"
    mine = conn.execute("SELECT current_setting(%s, true)", (probe,)).fetchone()
    return "session" if mine is not None and mine[0] == token else "transaction"


def forget() -> None:
    """Forget what was found (tests, and `schedule run` between jobs)."""
    _found.clear()


def found(key: str) -> PoolerMode | None:
    return _found.get(key)
