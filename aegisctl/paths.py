"""Where aegisctl keeps things on disk: every default folder, and the one rule for a folder a
user may configure ("the configured path, with ~ expanded, or the default").

The defaults follow the XDG base directories for a person and the FHS for root (a service): as
root the embedded server runs as a system user that could never enter /root, so nothing of
ours lives there. Nothing here creates a folder: the modules that write decide when to.

    folder        person                               root
    data          $XDG_DATA_HOME/aegisctl/pgdata       /var/lib/aegisctl/pgdata
    state         $XDG_STATE_HOME/aegisctl             /var/lib/aegisctl
    backups       $XDG_DATA_HOME/aegisctl/backups      /var/backups/aegisctl
    Barman home   <backups>/<target>/barman            (same)
    (before: one Barman home per user: $XDG_DATA_HOME/aegisctl/barman, /var/lib/aegisctl/barman;
     still read in place by the database whose backups it holds: backup/physical/identity.py)
    archives      <backups>/<target>/cleanup-archive   (same)
    runtime       <data dir's parent>/runtime          (same)
    sockets       <data dir>.run (beside it)           (same)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aegisctl.config import Settings

Env = Mapping[str, str]


def is_root() -> bool:
    return os.geteuid() == 0


def configured_or_default(configured: str | os.PathLike[str] | None,
                          default: Callable[[], Path]) -> Path:
    """The one rule: a configured folder wins (with ~ expanded); otherwise the default."""
    if configured:
        return Path(configured).expanduser()
    return default()


def _environ(env: Env | None) -> Env:
    return os.environ if env is None else env


def _xdg(env: Env, variable: str, fallback: str) -> Path:
    base = env.get(variable) or str(Path(env.get("HOME", "~")) / fallback)
    return Path(base).expanduser() / "aegisctl"


# -- the defaults -------------------------------------------------------------------------------


def default_data_dir(env: Env | None = None) -> Path:
    if is_root():
        # Never under /root: the server's own user could not reach it.
        return Path("/var/lib/aegisctl/pgdata")
    return _xdg(_environ(env), "XDG_DATA_HOME", ".local/share") / "pgdata"


def default_state_dir(env: Env | None = None) -> Path:
    if is_root():
        return Path("/var/lib/aegisctl")
    return _xdg(_environ(env), "XDG_STATE_HOME", ".local/state")


def default_backup_dir(env: Env | None = None) -> Path:
    if is_root():
        return Path("/var/backups/aegisctl")
    return _xdg(_environ(env), "XDG_DATA_HOME", ".local/share") / "backups"


def legacy_barman_home(env: Env | None = None) -> Path:
    """Where earlier releases kept Barman's home, one per user (see identity.py)."""
    if is_root():
        return Path("/var/lib/aegisctl/barman")
    return _xdg(_environ(env), "XDG_DATA_HOME", ".local/share") / "barman"


# -- the folders in use, from the settings ------------------------------------------------------


def data_dir(configured: str | None) -> Path:
    """The embedded server's data directory (`embedded.data_dir`, --data-dir,
    AEGISCTL_DATA_DIR all end up in the setting)."""
    return configured_or_default(configured, default_data_dir)


def state_dir(settings: Settings, env: Env | None = None) -> Path:
    """Job history, locks and the scheduler's files: AEGISCTL_STATE_DIR, then
    `scheduler.state_dir`, then the default."""
    env = _environ(env)
    if env.get("AEGISCTL_STATE_DIR"):
        return Path(env["AEGISCTL_STATE_DIR"]).expanduser()
    return configured_or_default(settings.scheduler.state_dir, lambda: default_state_dir(env))


def backup_root(settings: Settings) -> Path:
    """The logical backups' folder (one sub-folder per target): `backup.directory`."""
    return configured_or_default(settings.backup.directory, default_backup_dir)


def barman_home(settings: Settings, target: str) -> Path:
    """Barman's home (its config, catalogue and WAL) for one target: `backup.physical.directory`,
    or the `barman` folder inside the target's backup folder (it belongs to the target)."""
    return configured_or_default(settings.backup.physical.directory,
                                 lambda: backup_root(settings) / target / "barman").absolute()


def archive_root(settings: Settings, target: str) -> Path:
    """Where cleanup writes its archives for one target: `cleanup.archive_dir`/<target>, or
    the cleanup-archive folder inside the target's backup folder."""
    if settings.cleanup.archive_dir:
        return Path(settings.cleanup.archive_dir).expanduser() / target
    return backup_root(settings) / target / "cleanup-archive"


def runtime_dir(data: Path) -> Path:
    """Where the embedded server's binaries are copied when its user cannot reach them in
    the Python environment."""
    return data.parent / "runtime"


def socket_dir(data: Path) -> Path:
    """The embedded server's Unix socket folder: one per data directory (<data>.run beside
    it), so two servers whose data directories share a parent both start on port 5432."""
    return data.parent / f"{data.name}.run"


def locks_dir(state: Path) -> Path:
    return state / "locks"
