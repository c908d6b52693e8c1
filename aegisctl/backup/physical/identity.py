"""Whose physical backups these are: the Barman home and server of one database system.

A Barman home holds the backups and WAL of the servers configured in it. Two databases that
share a target name (every embedded database is `embedded`) must never share a Barman server:
streaming, `prune` and `restore --latest` would act on the other one's backups. So:

- the home belongs to the target: `backup.physical.directory`, or `<backup folder>/<target>/
  barman` (the target's own backup folder);
- Barman's server is named `<target>-<system identifier>`: the identifier PostgreSQL gives a
  cluster at initdb, kept by its standbys and base backups, new after a fresh initdb;
- a home that holds another database system's backups for the target is refused, in one line,
  by every physical command (`enable` included: two databases never share a home).

Earlier releases named the server after the target alone and kept the home at one place per
user (`/var/lib/aegisctl/barman` as root). Such a home is used where it is, under its old name,
when its backups carry this database's system identifier (Barman's `identity.json`, else a
backup's `backup.info`); nothing is moved. A configured home with an old-style server whose
identifier is unknown (no backup yet) still belongs to the target that configured it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aegisctl.errors import ConfigError, ConnectionFailed

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.targets import Target

_SYSTEM_ID = re.compile(r"^[1-9][0-9]{0,19}$")
_SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Placement:
    """Where a target's physical backups are: Barman's home and server name."""

    home: Path
    server: str
    system_id: str | None  # of the backups there (None: not known yet)
    exists: bool  # a Barman server of that name was set up in that home
    legacy: bool = False  # named after the target alone, by an earlier release


def target_server_name(target: Target) -> str:
    """The target part of the Barman server name (validated: it names folders)."""
    name = target.name.lower()
    if not _SERVER_NAME.match(name) or name in ("barman", "all") or len(name) > 42:
        raise ConfigError(
            f"target name '{target.name}' cannot name a Barman server",
            hint="use at most 42 lower-case letters, digits, - and _ (not 'all' or 'barman')",
        )
    return name


def server_name(target: Target, system_id: str) -> str:
    return f"{target_server_name(target)}-{system_id}"


def legacy_default_home() -> Path:
    """Where releases before the per-target home kept Barman's home (one per user)."""
    from aegisctl.paths import legacy_barman_home

    return legacy_barman_home()


def own_home(loaded: LoadedConfig, target: Target) -> tuple[Path, bool]:
    """(the target's Barman home, whether it was configured)."""
    from aegisctl.paths import barman_home

    settings = loaded.settings
    return barman_home(settings, target.name), bool(settings.backup.physical.directory)


# ---------------------------------------------------------------------------------------------
# The connected server's identifier


def connected_system_id(loaded: LoadedConfig, target: Target) -> str:
    """The database system identifier of the target's server. The embedded server's is read
    from its data directory (pg_controldata: works while it is stopped); another target's from
    `pg_control_system()` (executable by every role). Raises ConnectionFailed."""
    if target.embedded:
        return _embedded_system_id(loaded)
    from aegisctl.db import connect

    with connect(loaded, target, "backup physical") as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    value = str(row[0]) if row else ""
    if not _SYSTEM_ID.match(value):
        raise ConnectionFailed(f"target '{target.name}' gave no database system identifier")
    return value


def _embedded_system_id(loaded: LoadedConfig) -> str:
    from aegisctl.local import bundled_bin_dir
    from aegisctl.paths import data_dir as configured_data_dir

    data_dir = configured_data_dir(loaded.settings.embedded.data_dir)
    if not (data_dir / "global" / "pg_control").exists():
        raise ConnectionFailed(f"the embedded server's data directory {data_dir} holds no "
                               "database (no global/pg_control)",
                               hint="aegisctl local start creates it")
    done = subprocess.run([str(bundled_bin_dir() / "pg_controldata"), str(data_dir)],
                          capture_output=True, text=True, timeout=60,
                          env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")})
    for line in done.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Database system identifier" and _SYSTEM_ID.match(value.strip()):
            return value.strip()
    raise ConnectionFailed(f"cannot read the database system identifier of {data_dir}: "
                           + (done.stderr.strip().splitlines() or ["pg_controldata failed"])[-1])


# ---------------------------------------------------------------------------------------------
# What a home holds


def backups_system_id(server_dir: Path) -> str | None:
    """The system identifier Barman recorded for a server's backups: its identity.json
    (written at the first backup), else the newest backup.info; None when neither says."""
    try:
        data = json.loads((server_dir / "identity.json").read_text())
        value = str(data.get("systemid", "")) if isinstance(data, dict) else ""
        if _SYSTEM_ID.match(value):
            return value
    except (OSError, ValueError):
        pass
    try:
        infos = sorted((server_dir / "meta").glob("*-backup.info"), reverse=True)
    except OSError:
        infos = []
    for info in infos:
        try:
            lines = info.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition("=")
            if key.strip() == "systemid" and _SYSTEM_ID.match(value.strip()):
                return value.strip()
    return None


def servers_in(home: Path, base: str) -> list[Placement]:
    """The Barman servers of target `base` set up in `home`: `<base>-<id>` and the legacy
    `<base>`, from their configuration (enabled or disabled) or their data folder."""
    names: set[str] = set()
    for folder, suffixes in ((home / "barman.d", (".conf", ".conf.disabled")),
                             (home / "data", ("",))):
        try:
            entries = [e.name for e in os.scandir(folder)]
        except OSError:
            continue
        for entry in entries:
            for suffix in suffixes:
                if entry.endswith(suffix):
                    names.add(entry[:len(entry) - len(suffix)] if suffix else entry)
    found = []
    for name in sorted(names):
        if name == base:
            found.append(Placement(home, name, backups_system_id(home / "data" / name),
                                   exists=True, legacy=True))
        elif name.startswith(base + "-") and _SYSTEM_ID.match(name[len(base) + 1:]):
            found.append(Placement(home, name, name[len(base) + 1:], exists=True))
    return found


# ---------------------------------------------------------------------------------------------
# The one resolution


def candidates(loaded: LoadedConfig, target: Target) -> tuple[list[Placement], list[Placement]]:
    """(servers for the target in its own home, legacy ones at the old default home)."""
    base = target_server_name(target)
    home, configured = own_home(loaded, target)
    own = servers_in(home, base)
    old_home = legacy_default_home().absolute()
    old = [] if configured or old_home == home else \
        [p for p in servers_in(old_home, base) if p.legacy]
    return own, old


def place(loaded: LoadedConfig, target: Target, *, system_id: str | None = None) -> Placement:
    """This database's Barman home and server; raises ConfigError (one line) when the home
    holds another database system's backups for the target."""
    own, old = candidates(loaded, target)
    home, _ = own_home(loaded, target)
    if system_id is None:
        try:
            system_id = connected_system_id(loaded, target)
        except ConnectionFailed:
            # The server is gone (what a restore is for): the backups there are the ones.
            if len(own + old) == 1:
                return (own + old)[0]
            if own + old:
                raise ConfigError(
                    f"cannot tell whose physical backups to use for target '{target.name}': "
                    "its server cannot be reached and "
                    + "; ".join(f"{p.home} holds Barman server '{p.server}'" for p in own + old),
                    hint="start the server, or set backup.physical.directory") from None
            raise
    mine = [p for p in own if p.system_id == system_id] + \
        [p for p in own if p.legacy and p.system_id is None]
    if mine:
        return mine[0]
    foreign = [p for p in own if p.system_id != system_id]
    if foreign:
        other = foreign[0]
        raise ConfigError(
            f"the physical backups in {home} (Barman server '{other.server}') belong to "
            f"database system {other.system_id}, not to target '{target.name}' (system "
            f"{system_id})",
            hint="give this database a Barman home of its own: set backup.physical.directory "
            "or backup.directory")
    for legacy in old:
        if legacy.system_id == system_id:
            return legacy
    return Placement(home, server_name(target, system_id), system_id, exists=False)
