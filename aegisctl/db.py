"""Connections: targets, application_name, timeouts, retries for transient failures only.

psycopg is imported inside the functions so that importing this module (and `aegisctl --help`)
stays cheap.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aegisctl.config import LoadedConfig, Settings, TimeoutSettings
from aegisctl.errors import ConfigError, ConnectionFailed
from aegisctl.targets import Target, redact_dsn

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

WorkKind = Literal["query", "ddl", "maintenance"]
T = TypeVar("T")

# SQLSTATEs worth another try: the server is starting, stopping or restarting, or a
# serializable transaction lost a race. Everything else (bad password, missing database,
# missing privilege) fails at once: retrying cannot fix it.
TRANSIENT_SQLSTATES = {
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up / shutting down / recovery)
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "08006",  # connection_failure
    "08001",  # sqlclient_unable_to_establish_sqlconnection
}
# libpq reports connection-time failures as text without an SQLSTATE.
TRANSIENT_MESSAGES = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "connection refused",
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
    "no such file or directory",  # Unix socket not there yet while the server restarts
)


def is_transient(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return sqlstate in TRANSIENT_SQLSTATES
    text = str(exc).lower()
    if any(marker in text for marker in ("password authentication failed", "no password supplied",
                                          "database \"", "role \"", "no pg_hba.conf entry")):
        return False
    return any(marker in text for marker in TRANSIENT_MESSAGES)


def backoff_delays(attempts: int, initial: float, maximum: float) -> list[float]:
    """Exponential backoff with full jitter: attempt n waits up to initial * 2**n."""
    return [random.uniform(0, min(maximum, initial * 2**n)) for n in range(max(0, attempts - 1))]


def retry_transient(
    action: Callable[[], T], attempts: int, initial: float, maximum: float, what: str
) -> T:
    delays = backoff_delays(attempts, initial, maximum)
    for attempt in range(len(delays) + 1):
        try:
            return action()
        except Exception as exc:
            if attempt >= len(delays) or not is_transient(exc):
                raise
            log.info("%s failed (%s); retrying in %.1fs", what, _first_line(exc), delays[attempt])
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.removeprefix(prefix)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # libpq puts the useful cause on the line after "connection to server ... failed:".
    for line in lines:
        if "failed: " in line:
            return line.split("failed: ", 1)[1]
    return lines[0] if lines else type(exc).__name__


# libpq's messages for a connection string it cannot use: the DSN is wrong, not the server
# unreachable (a usage error, exit 2, never retried).
_CONNINFO_ERRORS = re.compile(
    r'invalid (integer|port number|connection option|URI|percent-encoded|IPv6|\S+ value|'
    r'\S+ method|SSL protocol)|missing "=" after|unterminated quoted string|'
    r'unexpected spaces found|could not match \d+ port numbers', re.IGNORECASE)


def is_conninfo_error(exc: BaseException) -> bool:
    return bool(_CONNINFO_ERRORS.search(str(exc)))


def check_conninfo(conninfo: str, target: Target) -> None:
    """Refuse a connection string libpq cannot parse, or whose ports are not numbers, before
    any attempt: a ConfigError (exit 2) that names the target, never 'cannot connect' (3)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ConfigError(f"target '{target.name}': invalid DSN ({target.display_dsn}): "
                          f"{_first_line(exc)}") from None
    for port in str(params.get("port") or "").split(","):
        port = port.strip()
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(
                f"target '{target.name}': invalid DSN ({target.display_dsn}): port {port!r} is "
                "not a port number (1 to 65535)")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass
class ConnectParams:
    conninfo: str
    kwargs: dict[str, Any]
    # The dsn the conninfo came from: "dsn", "direct_dsn" or "embedded".
    via: str = "dsn"


# What a piece of work needs from its connection: anything (a transaction pooler will do), a
# session of its own (advisory locks, session settings, CONCURRENTLY, VACUUM, pg_dump), or an
# unpooled server (replication: physical backups and WAL streaming).
Needs = Literal["any", "session", "direct"]


def needs_for(kind: WorkKind, needs: Needs | None) -> Needs:
    """Unless the caller says otherwise, maintenance work (VACUUM, REINDEX CONCURRENTLY, dumps
    and restores) needs a session of its own."""
    if needs is None:
        return "session" if kind == "maintenance" else "any"
    return needs


def connect_params(
    settings: Settings, target: Target, command: str, kind: WorkKind = "query",
    data_dir: str | None = None, needs: Needs | None = None,
) -> ConnectParams:
    """What psycopg.connect needs; starts the embedded server when that is the target. No
    startup `options`: poolers refuse them; the settings are set once connected (`settings`)."""
    conninfo, via = target.dsn, "dsn"
    if needs_for(kind, needs) != "any" and target.direct_dsn:
        conninfo, via = target.direct_dsn, "direct_dsn"
    if target.cluster is not None and via == "dsn":  # the member this kind of work goes to
        from aegisctl.cluster.members import member_conninfo, need_for

        conninfo = member_conninfo(target.cluster, need_for(target.cluster, kind))
    if target.embedded:
        from aegisctl.local import server_for

        server = server_for(data_dir or settings.embedded.data_dir, settings.embedded.database,
                            settings.embedded.run_as)
        conninfo, via = server.ensure_running().uri or "", "embedded"
    kwargs: dict[str, Any] = {
        "application_name": f"aegisctl {command}"[:63],
        "connect_timeout": max(1, int(settings.connection.connect_timeout)),
    }
    if target.password is not None:
        kwargs["password"] = target.password
    return ConnectParams(conninfo=conninfo, kwargs=kwargs, via=via)


def session_settings(settings: Settings, kind: WorkKind) -> dict[str, str]:
    """The settings every connection of this kind of work runs under."""
    timeouts: TimeoutSettings = getattr(settings.connection.timeouts, kind)
    return {"statement_timeout": str(_ms(timeouts.statement_timeout)),
            "lock_timeout": str(_ms(timeouts.lock_timeout))}


def session_refusal(target: Target, command: str, mode: str) -> ConfigError:
    return ConfigError(f"target '{target.name}' goes through a {mode} pooler; set "
                       f"targets.{target.name}.direct_dsn for {command}")


def require_session(loaded: LoadedConfig, target: Target, command: str,
                    needs: Needs = "session") -> None:
    """Stop before anything is done when the work needs a session (or an unpooled server) and
    the target offers only a pooler: exit 2, one line naming direct_dsn. Finds out what is on
    the dsn (once per run) when the config does not say. For commands that act before they
    connect; `connect` itself checks too."""
    if target.embedded or target.direct_dsn or needs == "any":
        return
    from aegisctl import pooler

    if target.pooler == "auto" and pooler.found(_pooler_key(target.dsn, target)) is None:
        try:
            with connect(loaded, target, command):
                pass
        except ConnectionFailed:
            # Nothing is known about the dsn yet: let the command fail (or succeed) on its own
            # terms, so its own earlier checks (a backup folder it cannot write) still speak
            # first; its connection goes through `connect`, which refuses a pooler as well.
            return
    _refuse_pooled(target, command, needs)


def _refuse_pooled(target: Target, command: str, needs: Needs) -> None:
    from aegisctl import pooler

    mode = target.pooler
    if mode == "auto":
        mode = pooler.found(_pooler_key(target.dsn, target)) or "none"
    if mode == "transaction" or (needs == "direct" and mode == "session"):
        raise session_refusal(target, command, mode)


def _pooler_key(conninfo: str, target: Target) -> str:
    return f"{target.name}\0{conninfo}"


def connect(
    loaded: LoadedConfig,
    target: Target,
    command: str,
    kind: WorkKind = "query",
    *,
    autocommit: bool = True,
    data_dir: str | None = None,
    dbname: str | None = None,
    needs: Needs | None = None,
) -> psycopg.Connection[Any]:
    """A connection to the target (or, with `dbname`, to another database on the target's
    server, with the same credentials), retried only while the failure is transient.

    Work that needs a session goes to `direct_dsn` when the target has one; without it, a
    transaction pooler on `dsn` stops the command (ConfigError, exit 2)."""
    import psycopg

    from aegisctl import pooler

    settings = loaded.settings
    need = needs_for(kind, needs)
    if need != "any" and not target.embedded and not target.direct_dsn:
        _refuse_pooled(target, command, need)  # configured, or found earlier in the run
    params = connect_params(settings, target, command, kind, data_dir, need)
    if dbname is not None:
        params.kwargs["dbname"] = dbname
    retry = settings.connection.retry
    check_conninfo(params.conninfo, target)
    shown = redact_dsn(params.conninfo) if params.via == "direct_dsn" else target.display_dsn

    def attempt() -> pooler.AegisConnection:
        return pooler.AegisConnection.connect(params.conninfo, autocommit=autocommit,
                                              **params.kwargs)

    log.info("connecting to target '%s' at %s for %s", target.name, shown, command)
    try:
        conn = retry_transient(attempt, retry.attempts, retry.initial_delay, retry.max_delay,
                               f"connecting to {target.name}")
    except psycopg.Error as exc:
        if is_conninfo_error(exc):
            raise ConfigError(f"target '{target.name}': invalid DSN ({shown}): "
                              f"{_first_line(exc)}") from None
        where = f" database '{dbname}'" if dbname else ""
        raise ConnectionFailed(
            f"cannot connect to target '{target.name}'{where} ({shown}): "
            f"{_first_line(exc)}"
        ) from None
    info = conn.info
    log.info("connected to %s as %s (PostgreSQL %s, backend pid %s)", info.dbname, info.user,
             info.parameter_status("server_version"), info.backend_pid)
    configured = "none" if params.via != "dsn" else target.pooler

    def open_second() -> psycopg.Connection[Any]:
        return psycopg.connect(params.conninfo, autocommit=True, **params.kwargs)

    try:
        was_autocommit = conn.autocommit
        conn.autocommit = True  # the settings are for the session (or per transaction)
        # Keyed by the configured dsn: every member of a cluster sits behind the same kind
        # of pooler, and require_session looks the finding up by it.
        key = _pooler_key(target.dsn if params.via == "dsn" else params.conninfo, target)
        pooler.settle(conn, key, configured,
                      session_settings(settings, kind), open_second,
                      f"target '{target.name}' ({params.via})")
        conn.autocommit = was_autocommit
        if need != "any" and params.via == "dsn":
            _refuse_pooled(target, command, need)  # found just now
    except BaseException:
        conn.close()
        raise
    if target.cluster is not None:  # the role, proven on the connection that does the work
        from aegisctl.cluster.members import confirm_connection

        confirm_connection(conn, target.cluster, kind)
    return conn


def server_version(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    """(server_version_num, human version) of the connected server."""
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def describe_db_error(exc: BaseException) -> tuple[str, int]:
    """A one-line message and exit code for a database error no command anticipated."""
    from aegisctl.errors import ExitCode

    sqlstate = getattr(exc, "sqlstate", None) or ""
    first = _first_line(exc)
    if sqlstate == "57014":
        return (f"the statement was cancelled (statement_timeout, see connection.timeouts): "
                f"{first}", int(ExitCode.FAILED))
    if sqlstate == "55P03":
        return (f"could not get a lock within lock_timeout (see connection.timeouts): {first}",
                int(ExitCode.FAILED))
    if sqlstate == "42501":
        return f"permission denied on the server: {first}", int(ExitCode.FAILED)
    if sqlstate.startswith("08") or sqlstate.startswith("57P") or (
        not sqlstate and type(exc).__name__ == "OperationalError"
    ):
        return f"lost the connection to the database: {first}", int(ExitCode.UNREACHABLE)
    return f"database error{f' {sqlstate}' if sqlstate else ''}: {first}", int(ExitCode.FAILED)
