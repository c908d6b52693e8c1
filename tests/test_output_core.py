"""The one output contract on config, local, schema, ext and roles: `--format json` (global or
per command) gives the result's JSON on every command that reports, the table form goes
through the same result object, and `--verbose` logs what is done on stderr."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegisctl.local import EmbeddedServer


@pytest.fixture(scope="module")
def spare_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="aegisctl-output-"))
    base.chmod(0o755)
    yield base
    EmbeddedServer(base / "pgdata").stop()
    shutil.rmtree(base, ignore_errors=True)


def test_local_uri_json(cli, spare_dir: Path) -> None:
    """`local uri` ignored --format json before."""
    data = str(spare_dir / "pgdata")
    plain = cli("--data-dir", data, "local", "uri")
    assert plain.exit_code == 0, plain.output
    uri = plain.stdout.strip()
    assert uri.startswith("postgresql://postgres@/aegis?host=") and "\n" not in uri
    for args in (("-f", "json", "local", "uri"), ("local", "uri", "--format", "json")):
        payload = json.loads(cli("--data-dir", data, *args).stdout)
        assert payload == {"uri": uri, "database": "aegis"}
    other = json.loads(cli("--data-dir", data, "local", "uri", "-d", "postgres", "-f",
                           "json").stdout)
    assert other["database"] == "postgres" and other["uri"].startswith("postgresql://postgres@/postgres?")


def test_local_uri_is_one_line_at_80_columns(cli, spare_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    uri = cli("--data-dir", str(spare_dir / "pgdata"), "local", "uri").stdout
    assert uri.count("\n") == 1 and len(uri.strip()) > 40


def test_local_commands_json(cli, spare_dir: Path) -> None:
    data = str(spare_dir / "pgdata")
    started = json.loads(cli("--data-dir", data, "-f", "json", "local", "start").stdout)
    assert started["running"] is True
    status = json.loads(cli("--data-dir", data, "-f", "json", "local", "status").stdout)
    assert status["pid"] == started["pid"]
    table = cli("--data-dir", data, "local", "status").stdout
    assert "running" in table and data in table
    stopped = json.loads(cli("--data-dir", data, "-f", "json", "local", "stop").stdout)
    assert stopped == {"stopped": True, "data_dir": data, "dry_run": False, "sessions": []}
    again = json.loads(cli("--data-dir", data, "local", "stop", "-f", "json").stdout)
    assert again["stopped"] is False


def test_config_commands_json(cli, write_config) -> None:
    path = write_config({"targets": {"primary": {"dsn": "postgresql://u:pw@db/aegis"}}})
    shown = json.loads(cli("--config", str(path), "-f", "json", "config", "show").stdout)
    assert shown["values"]["targets.primary.dsn"]["value"] == "postgresql://u:***@db/aegis"
    valid = json.loads(cli("-f", "json", "config", "validate", str(path)).stdout)
    assert valid == {"valid": True, "path": str(path), "targets": ["primary"]}
    table = cli("--config", str(path), "config", "show").stdout
    assert "# config file:" in table and "pw@" not in table


def test_schema_ext_roles_json_and_tables(cli, db_config) -> None:
    config = ("--config", str(db_config))
    init = json.loads(cli(*config, "-f", "json", "schema", "init", "--embedding-dim", "8").stdout)
    assert init["migration"]["changed"] is True and init["extensions"]["actions"]
    status = json.loads(cli(*config, "-f", "json", "schema", "status").stdout)
    assert status["up_to_date"] is True and status["embedding_dim"] == 8
    migrate = json.loads(cli(*config, "-f", "json", "schema", "migrate").stdout)
    assert migrate["changed"] is False
    verify = json.loads(cli(*config, "-f", "json", "schema", "verify").stdout)
    assert verify["ok"] is True
    extensions = json.loads(cli(*config, "-f", "json", "ext", "list").stdout)
    assert any(e["name"] == "vector" and e["status"] == "installed" for e in extensions)
    install = json.loads(cli(*config, "-f", "json", "ext", "install", "pg_trgm").stdout)
    assert install["actions"][0]["action"] == "present"
    roles = json.loads(cli(*config, "-f", "json", "roles", "apply", "--dry-run").stdout)
    assert roles["dry_run"] is True and roles["statements"]
    # The table forms come from the same results.
    assert "0001" in cli(*config, "schema", "status").stdout
    assert "up to date" in cli(*config, "schema", "migrate").stdout
    assert "no differences" in cli(*config, "schema", "verify").stdout
    assert "vector" in cli(*config, "ext", "list").stdout
    dry = cli(*config, "roles", "apply", "--dry-run")
    assert dry.stdout.rstrip().endswith(";") and "nothing was changed" in dry.stderr


def test_verbose_logs_what_is_done(cli, db_config) -> None:
    """--verbose said nothing about connecting or installing extensions before."""
    result = cli("--config", str(db_config), "--verbose", "schema", "init", "--embedding-dim",
                 "8")
    assert result.exit_code == 0, result.output
    log = result.stderr
    assert f"reading the config file {db_config}" in log
    assert "connecting to target 'primary' at" in log and "connected to" in log
    assert "created extension vector" in log
    assert "applied 0001_foundation.sql" in log
    quiet = cli("--config", str(db_config), "schema", "init")
    assert quiet.exit_code == 0 and "INFO" not in quiet.stderr


def test_a_table_too_wide_for_the_terminal_becomes_records(monkeypatch) -> None:
    """Identifiers and figures are never clipped: when they alone do not fit, each row is
    printed as `column value` lines instead of a cropped table."""
    import io

    from rich.console import Console

    from aegisctl import output

    buffer = io.StringIO()
    monkeypatch.setattr(output, "_console", lambda stderr=False: Console(
        file=buffer, width=50, no_color=True, highlight=False, markup=False, soft_wrap=False))
    ids = [f"public.a_table_with_a_rather_long_name_{i}" for i in range(2)]
    output.render(_Rows(ids), "table")
    text = buffer.getvalue()
    assert all(i in text for i in ids) and "1234567890" in text
    assert all(len(line) <= 50 for line in text.splitlines())


class _Rows:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def to_json(self) -> object:
        return self.ids

    def to_view(self) -> list[object]:
        from aegisctl.output import Column, Table

        return [Table([Column("table", "id"), Column("rows", "number"),
                       Column("bytes", "number"), Column("note", "text")],
                      [(i, 1234567890, 9876543210, "words " * 20) for i in self.ids])]
