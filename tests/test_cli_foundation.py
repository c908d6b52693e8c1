"""CLI conventions: exit codes, one-line errors, JSON output, secrets never shown."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import dsn_of

from aegisctl.cli.main import app


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip().startswith("aegisctl ")


def test_health_on_test_database(cli, db_config: Path) -> None:
    result = cli("--config", str(db_config), "health", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reachable"] is True
    assert report["role"] == "primary"
    assert report["server_version_num"] >= 160000
    assert report["latency_ms"] >= 0
    names = {e["name"]: e for e in report["extensions"]}
    assert names["vector"]["available_version"] is not None
    assert set(names) == {"vector", "pg_trgm", "fuzzystrmatch", "pg_stat_statements", "pgcrypto"}


def test_health_table_output(cli, db_config: Path) -> None:
    result = cli("--config", str(db_config), "health")
    assert result.exit_code == 0
    assert "PostgreSQL" in result.stdout and "vector" in result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_exits_3_with_one_line(cli, write_config) -> None:
    path = write_config({"targets": {"primary": {
        "dsn": f"postgresql://agent:topsecret@127.0.0.1:{_free_port()}/aegis"}},
        "connection": {"retry": {"attempts": 2, "initial_delay": "0.01s"}}})
    result = cli("--config", str(path), "health")
    assert result.exit_code == 3
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cannot connect to target 'primary'" in lines[0]
    assert "Connection refused" in lines[0]
    assert "topsecret" not in result.output
    assert "Traceback" not in result.output


def test_unreachable_json_still_reports(cli, write_config) -> None:
    path = write_config({"targets": {"primary": {
        "dsn": f"postgresql://agent@127.0.0.1:{_free_port()}/aegis"}},
        "connection": {"retry": {"attempts": 1}}})
    result = cli("--config", str(path), "health", "--format", "json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["reachable"] is False


def test_wrong_password_exits_3_and_never_echoes_it(cli, empty_db, write_config) -> None:
    empty_db.autocommit = True
    empty_db.execute("DROP ROLE IF EXISTS aegis_pw_test")
    empty_db.execute("CREATE ROLE aegis_pw_test LOGIN PASSWORD 'right-password'")
    try:
        if empty_db.info.host.startswith("/"):
            # The embedded server trusts its private socket; password auth needs a TCP listener,
            # which it deliberately does not have. Check the path through libpq's error instead.
            dsn = dsn_of(empty_db, user="nobody_here", password="wrong-password")
            expected = 'role "nobody_here" does not exist'
        else:
            dsn = dsn_of(empty_db, user="aegis_pw_test", password="wrong-password")
            expected = "password authentication failed"
        path = write_config({"targets": {"primary": {"dsn": dsn}},
                             "connection": {"retry": {"attempts": 3, "initial_delay": "2s"}}})
        result = cli("--config", str(path), "health")
        assert result.exit_code == 3
        assert expected in result.stderr
        assert "wrong-password" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        empty_db.execute("DROP ROLE IF EXISTS aegis_pw_test")


def test_missing_database_not_retried(cli, empty_db, write_config) -> None:
    path = write_config({"targets": {"primary": {"dsn": dsn_of(empty_db, "no_such_db")}},
                         "connection": {"retry": {"attempts": 5, "initial_delay": "5s"}}})
    result = cli("--config", str(path), "health")
    assert result.exit_code == 3
    assert 'database "no_such_db" does not exist' in result.stderr


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("targets: {primary: {dsn: [x}", "YAML syntax error"),
        ("targetz: {}\n", "unknown key; did you mean 'targets'"),
        ("schema:\n  embedding_dim: wide\n", "schema.embedding_dim: expected an integer"),
    ],
)
def test_bad_config_exits_2_one_line(cli, write_config, yaml_text: str, fragment: str) -> None:
    path = write_config(yaml_text)
    for args in (("health",), ("config", "show"), ("config", "validate")):
        result = cli("--config", str(path), *args)
        assert result.exit_code == 2, args
        assert fragment in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output


def test_unknown_target_exits_2(cli, db_config) -> None:
    result = cli("--config", str(db_config), "--target", "nope", "health")
    assert result.exit_code == 2
    assert "unknown target 'nope'" in result.stderr


def test_nonsense_flag_is_usage_error(cli) -> None:
    result = cli("health", "--frobnicate")
    assert result.exit_code == 2
    assert "--frobnicate" in result.output


@pytest.mark.parametrize(("argv", "fragments"), [
    (["health", "--frobnicate"], ["No such option: --frobnicate", "'aegisctl health --help'"]),
    (["--frobnicate"], ["No such option: --frobnicate", "'aegisctl --help'"]),
    (["memory", "search", "x", "--limit", "0"], ["'--limit'", "greater than or equal to 1"]),
    (["memory", "search"], ["Missing argument 'query'"]),
    (["nosuchcommand"], ["No such command 'nosuchcommand'"]),
])
def test_command_line_mistakes_are_one_line(argv: list[str], fragments: list[str]) -> None:
    """The real console script: one `aegisctl: error:` line naming the mistake and where the
    usage is, exit 2, nothing on stdout (not click's boxed usage text)."""
    script = str(Path(sys.executable).parent / "aegisctl")
    done = subprocess.run([script, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aegisctl: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_config_validate_ok(cli, db_config) -> None:
    result = cli("config", "validate", str(db_config))
    assert result.exit_code == 0
    assert "valid" in result.stdout


def test_config_show_redacts_and_sources(cli, write_config, tmp_path, monkeypatch) -> None:
    path = write_config("targets:\n  primary:\n    dsn: postgresql://agent:hunter2@db/aegis\n")
    result = cli("--config", str(path), "config", "show", "--format", "json")
    assert result.exit_code == 0
    view = json.loads(result.stdout)
    entry = view["values"]["targets.primary.dsn"]
    assert entry == {"value": "postgresql://agent:***@db/aegis", "source": f"{path}:3"}
    assert view["values"]["schema.embedding_dim"]["source"] == "default"
    assert "hunter2" not in result.output
    monkeypatch.setenv("AEGISCTL_DSN", "postgresql://x:envsecret@h/db")
    result = cli("--config", str(path), "config", "show")
    assert "envsecret" not in result.output
    assert "env AEGISCTL_DSN" in result.stdout


def test_every_command_has_help_with_an_example() -> None:
    import typer.main

    root = typer.main.get_command(app)

    def walk(command, path):
        yield path, command
        if hasattr(command, "list_commands"):
            ctx = typer.Context(command)
            for name in command.list_commands(ctx):
                yield from walk(command.get_command(ctx, name), [*path, name])

    missing = []
    seen = [" ".join(path) for path, _ in walk(root, [])]
    assert {"health", "config show", "local start"} <= set(seen)
    for path, command in walk(root, []):
        text = command.help or ""
        if "Example" not in text:
            missing.append(" ".join(path) or "(root)")
    assert not missing, f"commands without an example in --help: {missing}"


def test_core_modules_do_not_import_cli_libraries() -> None:
    package = Path(__file__).parent.parent / "aegisctl"
    offenders = []
    for path in package.rglob("*.py"):
        if "cli" in path.relative_to(package).parts or path.name == "output.py":
            continue
        text = path.read_text()
        if "import typer" in text or "import rich" in text or "from rich" in text:
            offenders.append(str(path))
    assert not offenders


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_help_and_version_import_nothing_heavy(flag: str) -> None:
    code = (
        "import sys; from aegisctl.cli.main import app\n"
        f"try:\n    app(['{flag}'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('psycopg', 'boto3', 'botocore', 'apscheduler', 'numpy', 'yaml',"
        " 'pgvector', 'wordllama') if m in sys.modules]\nprint('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY=\n" in out.stdout, out.stdout


def test_installed_console_script_runs(db_config: Path, clean_env) -> None:
    script = shutil.which("aegisctl") or str(Path(sys.executable).parent / "aegisctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGISCTL_", "PG"))}
    done = subprocess.run([script, "--config", str(db_config), "health", "-f", "json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reachable"] is True
    bad = subprocess.run([script, "--config", "/nonexistent.yaml", "health"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def test_keyboard_interrupt_exits_130(monkeypatch, cli, db_config) -> None:
    import aegisctl.health

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(aegisctl.health, "probe", interrupted)
    result = cli("--config", str(db_config), "health")
    assert result.exit_code == 130
    assert "interrupted" in result.stderr


def test_typer_exit_codes_are_documented() -> None:
    from aegisctl.errors import ExitCode

    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 130]
    assert typer.Exit  # the CLI's only way out


def test_unanticipated_database_errors_are_one_line(cli, db_config, empty_db, monkeypatch) -> None:
    """A statement cut by statement_timeout inside a command: one line, exit 1, no traceback."""
    import aegisctl.health

    def slow_probe(conn, report, required, pings=5):
        conn.execute("SET statement_timeout = '50ms'")
        conn.execute("SELECT pg_sleep(2)")

    monkeypatch.setattr(aegisctl.health, "probe", slow_probe)
    result = cli("--config", str(db_config), "health")
    assert result.exit_code == 1
    assert "statement was cancelled (statement_timeout" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
