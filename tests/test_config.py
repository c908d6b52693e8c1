"""Config loading and validation: every bad input is one line with the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegisctl.config import load_config, parse_yaml, validate
from aegisctl.errors import ConfigError
from aegisctl.targets import redact_dsn, resolve_target


def test_defaults_without_file(clean_env: Path) -> None:
    loaded = load_config(None)
    assert loaded.path is None
    # unset: the database's recorded dimension is the truth (1536 for a new database)
    assert loaded.settings.schema.embedding_dim is None
    assert resolve_target(loaded).embedded


def test_yaml_syntax_error_reports_line_and_column(write_config, clean_env) -> None:
    path = write_config("targets:\n  primary:\n    dsn: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert f"{path}:" in str(err.value)
    assert "YAML syntax error" in str(err.value)
    # line:column, 1-based
    location = str(err.value).split(f"{path}:")[1].split(":")
    assert location[0].isdigit() and location[1].isdigit()


def test_unknown_key_names_full_path_and_suggests(write_config, clean_env) -> None:
    path = write_config("connection:\n  retry:\n    atempts: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    message = str(err.value)
    assert f"{path}:3: connection.retry.atempts: unknown key" in message
    assert "did you mean 'attempts'" in message


def test_wrong_type_names_path_and_expectation(write_config, clean_env) -> None:
    path = write_config("schema:\n  embedding_dim: lots\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "schema.embedding_dim: expected an integer, got string 'lots'" in str(err.value)


def test_wrong_type_in_list_and_duration(clean_env) -> None:
    with pytest.raises(ConfigError, match=r"schema\.extensions\[1\]: expected a string"):
        validate({"schema": {"extensions": ["vector", 3]}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"connection\.connect_timeout: expected a duration"):
        validate({"connection": {"connect_timeout": "soon"}}, "x.yaml")
    settings = validate({"connection": {"connect_timeout": "2m"}}, "x.yaml")
    assert settings.connection.connect_timeout == 120


def test_duplicate_key_refused(clean_env) -> None:
    with pytest.raises(ConfigError, match="duplicate key 'default_target'"):
        parse_yaml("default_target: a\ndefault_target: b\n", "x.yaml")


def test_literal_values_checked(clean_env) -> None:
    with pytest.raises(ConfigError, match=r"targets\.r\.role: expected one of 'primary', 'replica'"):
        validate({"targets": {"r": {"dsn": "x", "role": "leader"}}}, "x.yaml")


def test_default_target_must_exist(clean_env) -> None:
    with pytest.raises(ConfigError, match="default_target 'nope' is not among the targets"):
        validate({"targets": {"a": {"dsn": "x"}}, "default_target": "nope"}, "x.yaml")


def test_search_order_first_found_wins(write_config, clean_env, monkeypatch) -> None:
    local = write_config({"schema": {"embedding_dim": 384}})  # ./aegisctl.yaml (cwd is tmp_path)
    user_dir = clean_env / ".config" / "aegisctl"
    user_dir.mkdir(parents=True)
    (user_dir / "config.yaml").write_text("schema: {embedding_dim: 768}\n")
    assert load_config(None).path == Path("aegisctl.yaml")
    assert load_config(None).settings.schema.embedding_dim == 384
    local.unlink()
    assert load_config(None).settings.schema.embedding_dim == 768
    env_file = write_config({"schema": {"embedding_dim": 256}}, name="env.yaml")
    monkeypatch.setenv("AEGISCTL_CONFIG", str(env_file))
    assert load_config(None).settings.schema.embedding_dim == 256
    explicit = write_config({"schema": {"embedding_dim": 128}}, name="explicit.yaml")
    assert load_config(str(explicit)).settings.schema.embedding_dim == 128


def test_missing_explicit_file_is_an_error(clean_env) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/aegisctl.yaml")


def test_sources_record_file_and_line(write_config, clean_env) -> None:
    path = write_config("schema:\n  embedding_dim: 384\n")
    loaded = load_config(str(path))
    assert loaded.sources["schema.embedding_dim"] == f"{path}:2"


def test_targets_selection(write_config, clean_env, monkeypatch) -> None:
    path = write_config({"targets": {"primary": {"dsn": "postgresql://a@h1/db"},
                                     "replica": {"dsn": "postgresql://a@h2/db",
                                                 "role": "replica"}}})
    loaded = load_config(str(path))
    assert resolve_target(loaded).name == "primary"
    replica = resolve_target(loaded, "replica")
    assert replica.role == "replica" and "h2" in replica.dsn
    with pytest.raises(ConfigError, match=r"unknown target 'standby' \(targets: primary, replica\)"):
        resolve_target(loaded, "standby")
    monkeypatch.setenv("AEGISCTL_DSN", "postgresql://b@h3/db")
    assert resolve_target(loaded, "replica").dsn == "postgresql://b@h3/db"


def test_several_targets_without_choice(write_config, clean_env) -> None:
    path = write_config({"targets": {"a": {"dsn": "x"}, "b": {"dsn": "y"}}})
    with pytest.raises(ConfigError, match="several targets"):
        resolve_target(load_config(str(path)))


def test_env_dsn_without_targets(clean_env, monkeypatch) -> None:
    monkeypatch.setenv("AEGISCTL_DSN", "postgresql://u@h/db")
    target = resolve_target(load_config(None))
    assert not target.embedded and target.dsn == "postgresql://u@h/db"


def test_libpq_environment_means_not_embedded(clean_env, monkeypatch) -> None:
    monkeypatch.setenv("PGSERVICE", "aegis")
    target = resolve_target(load_config(None))
    assert target.name == "libpq" and target.dsn == ""


def test_password_sources(write_config, clean_env, monkeypatch, tmp_path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret-from-file\n")
    secret_file.chmod(0o600)
    path = write_config({"targets": {
        "f": {"dsn": "postgresql://u@h/db", "password_file": str(secret_file)},
        "e": {"dsn": "postgresql://u@h/db", "password_env": "AEGIS_PW"},
    }})
    loaded = load_config(str(path))
    assert resolve_target(loaded, "f").password == "s3cret-from-file"
    with pytest.raises(ConfigError, match="AEGIS_PW"):
        resolve_target(loaded, "e")
    monkeypatch.setenv("AEGIS_PW", "from-env")
    assert resolve_target(loaded, "e").password == "from-env"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://agent:hunter2@db:5432/aegis", "postgresql://agent:***@db:5432/aegis"),
        ("postgres://agent:p%40ss@db/aegis?sslmode=require",
         "postgres://agent:***@db/aegis?sslmode=require"),
        ("postgresql://agent@db/aegis?password=hunter2&sslmode=require",
         "postgresql://agent@db/aegis?password=***&sslmode=require"),
        ("host=db user=agent password=hunter2 dbname=aegis",
         "host=db user=agent password=*** dbname=aegis"),
        ("host=db password='hun ter2' dbname=aegis", "host=db password=*** dbname=aegis"),
        ("postgresql://agent@db/aegis", "postgresql://agent@db/aegis"),
    ],
)
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected
