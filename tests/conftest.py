"""The test harness: a real PostgreSQL with pgvector for the whole session.

By default an embedded server (the same code `aegisctl local` uses) is started once in a temporary
folder and stopped at the end; with AEGISCTL_TEST_DSN=postgresql://user:pw@host:port/db the suite
runs against that server instead (the user must be allowed to CREATE DATABASE).

Each test that asks for `empty_db` gets a fresh, empty database, cloned by pytest-postgresql's
janitor from a template. Tests use `dsn_of(conn)` to point aegisctl at it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import psycopg
import pytest
import yaml
from pytest_postgresql import factories
from pytest_postgresql.executors.noop import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from typer.testing import CliRunner

from aegisctl.cli.main import app
from aegisctl.local import EmbeddedServer

# Variables that would point aegisctl somewhere else than the test server.
_LEAKY_ENV = ("AEGISCTL_CONFIG", "AEGISCTL_DSN", "AEGISCTL_TARGET", "AEGISCTL_DATA_DIR",
              "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE",
              "PGSERVICEFILE", "PGPASSFILE")


# The suite is hermetic: no AEGISCTL_* variable of the developer's shell (AEGISCTL_DATA_DIR
# exported for daily work, say) reaches any test, session fixtures included.
for _name in [n for n in os.environ if n.startswith("AEGISCTL_")
              and not n.startswith("AEGISCTL_TEST")]:
    del os.environ[_name]

# Session and module fixtures (a Patroni cluster, a pooler) run before any test's own state folder
# exists: without this they would write their locks and check snapshots into the machine's
# default state folder (/var/lib/aegisctl as root), shared with a real installation's.
_SESSION_STATE = tempfile.mkdtemp(prefix="aegisctl-test-state-")
os.environ["AEGISCTL_STATE_DIR"] = _SESSION_STATE
atexit.register(shutil.rmtree, _SESSION_STATE, True)


@pytest.fixture(autouse=True)
def _own_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Each test has its own state folder (job locks, job history): as root the default is
    /var/lib/aegisctl, shared by every test and every other run on the machine. Tests that
    configure scheduler.state_dir use this same folder, tmp_path / "state"."""
    state = tmp_path / "state"
    monkeypatch.setenv("AEGISCTL_STATE_DIR", str(state))
    return state


@pytest.fixture(scope="session")
def pg_server() -> Iterator[NoopExecutor]:
    """The session's PostgreSQL as a pytest-postgresql no-process executor."""
    external = os.environ.get("AEGISCTL_TEST_DSN")
    if external:
        url = urlparse(external)
        executor = NoopExecutor(
            host=unquote(url.hostname or "localhost"),
            port=url.port or 5432,
            user=unquote(url.username or "postgres"),
            password=unquote(url.password) if url.password else None,
            dbname="aegis_test",
            options="",
            maintenance_dbname=url.path.lstrip("/") or "postgres",
        )
        with _base_template(executor):
            yield executor
        return
    base = Path(tempfile.mkdtemp(prefix="aegisctl-test-"))
    # As root the server runs as an unprivileged user, which must be able to enter this folder.
    base.chmod(0o755)
    server = EmbeddedServer(base / "pgdata", database="postgres")
    status = server.ensure_running()
    assert status.socket_dir is not None
    try:
        executor = NoopExecutor(
            host=status.socket_dir,
            port=status.port or 5432,
            user="postgres",
            password=None,
            dbname="aegis_test",
            options="",
        )
        with _base_template(executor):
            yield executor
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _base_template(executor: NoopExecutor) -> DatabaseJanitor:
    """The empty database every per-test template is cloned from (pytest-postgresql's
    depends_on chain starts at the base executor's template)."""
    janitor = DatabaseJanitor(
        user=executor.user, host=executor.host, port=executor.port,
        dbname=executor.template_dbname, maintenance_dbname=executor.maintenance_dbname,
        password=executor.password, as_template=True,
    )
    janitor.drop()
    return janitor


empty_template = factories.postgresql_noproc(depends_on="pg_server", dbname="aegis_empty")
empty_db = factories.postgresql("empty_template")


def dsn_of(conn: psycopg.Connection[Any], dbname: str | None = None, *, user: str | None = None,
           password: str | None = None) -> str:
    """A URI for the database `conn` is connected to: as the same user with its password, or as
    `user` with `password` (None: no password, as the embedded server's socket trusts)."""
    info = conn.info
    login = user or info.user
    secret = password if user else info.password
    auth = f"{quote(login, safe='')}" + (f":{quote(secret, safe='')}" if secret else "")
    host = info.host
    db = dbname or info.dbname
    if host.startswith("/"):
        return f"postgresql://{auth}@/{db}?host={host}&port={info.port}"
    return f"postgresql://{auth}@{host}:{info.port}/{db}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No variable from the developer's shell steers aegisctl; HOME is a temporary folder."""
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """write_config({...}) or write_config("raw yaml") -> path of a config file."""

    def write(content: dict[str, Any] | str, name: str = "aegisctl.yaml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
        return path

    return write


@pytest.fixture
def db_dsn(empty_db: psycopg.Connection[Any]) -> str:
    return dsn_of(empty_db)


@pytest.fixture
def db_config(write_config: Callable[..., Path], db_dsn: str) -> Path:
    """A config whose only target, 'primary', is this test's fresh database."""
    return write_config({"targets": {"primary": {"dsn": db_dsn}},
                         "connection": {"retry": {"attempts": 1}}})


class Cli:
    """Runs aegisctl in-process through Typer's runner, like a user at a shell would."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Any:
        return self.runner.invoke(app, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def cli(clean_env: Path) -> Cli:
    return Cli()


# ---------------------------------------------------------------------------------------------
# The fully migrated Aegis schema (embedding dimension 1536), built once per session in a
# template database; `aegis_db` is a fresh clone of it for each test.


def _load_aegis_schema(host: str, port: int, user: str, dbname: str,
                       password: str | None = None, **_: Any) -> None:
    from aegisctl.config import SchemaSettings
    from aegisctl.schema import init_schema

    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, password=password,
                         autocommit=True) as conn:
        init_schema(conn, SchemaSettings(embedding_dim=1536), wait_lock=60)


schema_template = factories.postgresql_noproc(depends_on="pg_server", dbname="aegis_schema",
                                              load=[_load_aegis_schema])
aegis_db = factories.postgresql("schema_template")


@pytest.fixture
def aegis_dsn(aegis_db: psycopg.Connection[Any]) -> str:
    return dsn_of(aegis_db)


@pytest.fixture
def aegis_config(write_config: Callable[..., Path], aegis_dsn: str) -> Path:
    """A config whose only target, 'primary', is this test's fully migrated database."""
    return write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                         "connection": {"retry": {"attempts": 1}}})


# The memory tests' fixtures (a migrated 32-dimension database, a real embedding server),
# registered here once: a session template defined in two test modules would be built twice.
# The fault suite's small filesystem (tests/test_faults_*.py).
from fault_fixtures import small_fs  # noqa: E402, F401
from memory_fixtures import (  # noqa: E402, F401
    embedding_server,
    make_config,
    memory_db,
    memory_dsn,
    memory_settings,
    memory_template,
)
