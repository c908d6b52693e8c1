"""The roles log in for real: over TCP, with scram-sha-256 the only method pg_hba.conf allows
there, on a second embedded server that this module starts with a TCP listener. (The suite's
own server trusts its private socket, so a login there proves nothing about passwords.)"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from aegisctl.local import EmbeddedServer, server_options

APP_SECRET = "app-Ünïcode pass phrase"  # SASLprep and UTF-8 matter: not plain ASCII
READONLY_SECRET = "ro-" + "x" * 40


@dataclass
class TcpServer:
    server: EmbeddedServer
    port: int
    admin_dsn: str  # superuser over the trusted socket


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def tcp_server() -> Iterator[TcpServer]:
    base = Path(tempfile.mkdtemp(prefix="aegisctl-scram-"))
    base.chmod(0o755)
    server = EmbeddedServer(base / "pgdata")
    try:
        status = server.ensure_running()
        assert status.socket_dir is not None
        with psycopg.connect(server.uri(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET listen_addresses = '127.0.0.1'")
            conn.execute("ALTER SYSTEM SET password_encryption = 'scram-sha-256'")
        server.stop()
        # Trust stays on the private socket (for the admin); TCP takes SCRAM and nothing else.
        (base / "pgdata" / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        port = _free_port()
        server._run([server._bin("pg_ctl"), "-D", str(server.data_dir), "-w", "-t", "60",
                     "-l", str(server.log_file), "-o", server_options(Path(status.socket_dir), port),
                     "start"], "start the SCRAM test server")
        yield TcpServer(server, port, server.uri())
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def roles_applied(tcp_server: TcpServer, tmp_path_factory) -> TcpServer:
    """schema init + roles apply through the CLI, passwords from a file and the environment."""
    from typer.testing import CliRunner

    from aegisctl.cli.main import app

    folder = tmp_path_factory.mktemp("scram")
    password_file = folder / "readonly.password"
    password_file.write_text(READONLY_SECRET + "\n")
    password_file.chmod(0o600)
    config = folder / "aegisctl.yaml"
    config.write_text(json.dumps({
        "targets": {"primary": {"dsn": tcp_server.admin_dsn}},
        "roles": {"app": {"name": "aegis_app", "password_env": "SCRAM_TEST_APP_PASSWORD"},
                  "readonly": {"name": "aegis_readonly",
                               "password_file": str(password_file)}},
    }))
    runner = CliRunner()
    env = {"SCRAM_TEST_APP_PASSWORD": APP_SECRET, "AEGISCTL_DSN": "", "NO_COLOR": "1"}
    for args in (["schema", "init", "--embedding-dim", "8"], ["roles", "apply"]):
        result = runner.invoke(app, ["--config", str(config), *args], env=env,
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert APP_SECRET not in result.output and READONLY_SECRET not in result.output
    return tcp_server


def _tcp(server: TcpServer, user: str, password: str) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=server.port, dbname="aegis", user=user,
                           password=password, sslmode="disable", autocommit=True,
                           connect_timeout=10)


def test_tcp_accepts_only_scram(tcp_server: TcpServer) -> None:
    """The setup is what it claims: over TCP, no password means no login."""
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host="127.0.0.1", port=tcp_server.port, dbname="aegis",
                        user="postgres", sslmode="disable", connect_timeout=10)


def test_app_role_logs_in_with_scram(roles_applied: TcpServer) -> None:
    with _tcp(roles_applied, "aegis_app", APP_SECRET) as conn:
        assert conn.execute("SELECT system_user, current_user").fetchone() == (
            "scram-sha-256:aegis_app", "aegis_app")
        row = conn.execute("INSERT INTO episodic_memory (event_type, summary)"
                           " VALUES ('test', 'scram login') RETURNING id").fetchone()
        assert row is not None
        conn.execute("DELETE FROM episodic_memory WHERE id = %s", row)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE sneaky (id int)")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _tcp(roles_applied, "aegis_app", APP_SECRET + "x")


def test_readonly_role_logs_in_with_scram(roles_applied: TcpServer) -> None:
    with _tcp(roles_applied, "aegis_readonly", READONLY_SECRET) as conn:
        assert conn.execute("SELECT system_user").fetchone() == (
            "scram-sha-256:aegis_readonly",)
        conn.execute("SELECT count(*) FROM episodic_memory").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO episodic_memory (event_type, summary) VALUES ('a', 'b')")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _tcp(roles_applied, "aegis_readonly", APP_SECRET)


def test_aegisctl_itself_connects_as_the_readonly_role(roles_applied: TcpServer,
                                                      tmp_path: Path) -> None:
    """A `search` target as the README shows it: password_file, SCRAM over TCP."""
    from typer.testing import CliRunner

    from aegisctl.cli.main import app

    password_file = tmp_path / "pw"
    password_file.write_text(READONLY_SECRET + "\n")
    password_file.chmod(0o600)
    config = tmp_path / "aegisctl.yaml"
    config.write_text(json.dumps({"targets": {"search": {
        "dsn": f"postgresql://aegis_readonly@127.0.0.1:{roles_applied.port}/aegis"
               "?sslmode=disable",
        "password_file": str(password_file)}}}))
    result = CliRunner().invoke(app, ["--config", str(config), "health", "-f", "json"],
                                env={"AEGISCTL_DSN": ""}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["user"] == "aegis_readonly"
