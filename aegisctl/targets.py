"""Which server a command talks to: a named target from the config, the environment, or the
embedded PostgreSQL when nothing is configured. Secrets are resolved here and never rendered."""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aegisctl.config import LoadedConfig, TargetSettings
from aegisctl.errors import ConfigError

if TYPE_CHECKING:
    from aegisctl.cluster.members import ClusterBinding

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
# libpq's own variables that mean "the user has pointed libpq at a server".
LIBPQ_POINTERS = ("PGSERVICE", "PGHOST")


@dataclass
class Target:
    name: str
    role: str
    embedded: bool
    source: str
    # The DSN as configured (may hold a password if the user wrote one in: never print it raw).
    dsn: str = ""
    password: str | None = field(default=None, repr=False)
    # A Patroni cluster or a multi-host DSN: which member each connection goes to
    # (aegisctl.cluster.members); None for a single server.
    cluster: ClusterBinding | None = None
    # Session work goes here when set (see aegisctl.pooler); `pooler` says what sits on dsn.
    direct_dsn: str | None = None
    pooler: str = "auto"
    pgbouncer_admin_dsn: str | None = None

    @property
    def display_dsn(self) -> str:
        return redact_dsn(self.dsn) if self.dsn else "(embedded)" if self.embedded else "(libpq)"


_URI_PASSWORD = re.compile(r"^(postgres(?:ql)?://[^:/@?#]*):[^@/?#]*@", re.IGNORECASE)
_PARAM_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ***, in URI and key=value forms."""
    if re.match(r"^postgres(ql)?://", dsn, re.IGNORECASE):
        dsn = _URI_PASSWORD.sub(r"\1:***@", dsn)
        return _PARAM_PASSWORD.sub(r"\1***", dsn)
    return _KV_PASSWORD.sub(r"\1***", dsn)


def read_password(target_name: str, spec: TargetSettings, env: dict[str, str]) -> str | None:
    if spec.password_env:
        value = env.get(spec.password_env)
        if value is None:
            raise ConfigError(
                f"target '{target_name}': environment variable {spec.password_env} "
                "(password_env) is not set",
                hint="export it, or remove password_env from the config",
            )
        return value
    if spec.password_file:
        path = Path(spec.password_file).expanduser()
        try:
            mode = path.stat().st_mode
            secret = path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise ConfigError(
                f"target '{target_name}': password_file {path} does not exist"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"target '{target_name}': cannot read password_file {path}: {exc.strerror}"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "password_file %s is readable by group or others; chmod 600 it", path
            )
        return secret
    return None


def resolve_target(
    loaded: LoadedConfig, requested: str | None = None, env: dict[str, str] | None = None
) -> Target:
    """The target --target names, else default_target, else the only one, else embedded."""
    env = dict(os.environ) if env is None else env
    settings = loaded.settings
    targets = settings.targets
    env_dsn = env.get("AEGISCTL_DSN")
    name = requested or settings.default_target

    if name == EMBEDDED and EMBEDDED not in targets:
        return Target(name=EMBEDDED, role="primary", embedded=True, source="--target embedded")
    if name is not None and name not in targets:
        if env_dsn and not targets:
            targets = {name: TargetSettings()}
        else:
            known = ", ".join(sorted(targets)) or "none configured"
            raise ConfigError(
                f"unknown target '{name}' (targets: {known})",
                hint="add it under targets: in the config, or pick another with --target",
            )
    if name is None:
        if len(targets) == 1:
            name = next(iter(targets))
        elif "primary" in targets:
            name = "primary"
        elif targets:
            raise ConfigError(
                f"several targets are configured ({', '.join(sorted(targets))}) and none is chosen",
                hint="pass --target NAME or set default_target in the config",
            )
    if name is None:
        if env_dsn:
            return Target(name="default", role="primary", embedded=False, dsn=env_dsn,
                          source="env AEGISCTL_DSN")
        if any(env.get(var) for var in LIBPQ_POINTERS):
            return Target(name="libpq", role="primary", embedded=False,
                          source="libpq environment (PGSERVICE/PGHOST)")
        return Target(name=EMBEDDED, role="primary", embedded=True, source="default (no targets)")

    spec = targets[name]
    dsn, source = spec.dsn, loaded.sources.get(f"targets.{name}.dsn", "config")
    if env_dsn:
        dsn, source = env_dsn, "env AEGISCTL_DSN"
    if dsn is None:
        raise ConfigError(f"target '{name}' has no dsn", hint=f"set targets.{name}.dsn")
    from aegisctl.cluster.members import binding_for

    return Target(
        name=name,
        role=spec.role,
        embedded=False,
        dsn=dsn,
        source=source,
        password=read_password(name, spec, env),
        cluster=binding_for(name, dsn, spec.patroni),
        direct_dsn=spec.direct_dsn,
        pooler=spec.pooler,
        pgbouncer_admin_dsn=spec.pgbouncer_admin_dsn,
    )
