"""Barman as a separate program: where it lives, who it runs as, its configuration, running it.

Barman is GPL-3.0, so aegisctl never imports it: it runs the `barman` executable and reads its
JSON output. A fresh machine gets it from `install_engine`: a private virtual environment under
the physical backup directory with `psycopg2-binary` (a wheel: no compiler, no libpq headers)
and Barman installed without its dependency resolution (it asks for the `psycopg2` sdist, which
`psycopg2-binary` provides as the same module), plus its two small pure-Python dependencies.

As root, Barman runs as the embedded server's user (or `backup.physical.run_as`): it streams WAL
over the server's owner-only socket, and the directories it restores must belong to the user
PostgreSQL will run as.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.children import die_with_parent
from aegisctl.errors import ConfigError, MissingBinary, OperationFailed
from aegisctl.paths import is_root

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig, Settings
    from aegisctl.targets import Target

log = logging.getLogger(__name__)

_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
# Barman's own runtime dependencies besides psycopg2 (see its setup metadata).
_ENGINE_DEPS = ["psycopg2-binary>=2.9", "python-dateutil>=2.8", "argcomplete>=3"]


@dataclass
class Engine:
    """Everything needed to run Barman for one target."""

    home: Path  # backup.physical.directory
    server: str  # Barman's name for the target
    run_as: str | None  # None: the current user
    barman_path: str | None  # configured executable, or None for the private environment
    version: str
    slot_name: str
    bin_dir: Path  # PostgreSQL client binaries (pg_basebackup, pg_receivewal, ...)
    system_id: str | None = None  # the database system whose backups these are
    legacy: bool = False  # a home and server name an earlier release set up (used in place)
    # The target's backup folder when the home is the default inside it: as root, Barman's
    # user must be able to enter the folders from there down to the home.
    enter_from: Path | None = None

    @property
    def config_file(self) -> Path:
        return self.home / "barman.conf"

    @property
    def server_config(self) -> Path:
        return self.home / "barman.d" / f"{self.server}.conf"

    @property
    def barman_home(self) -> Path:
        return self.home / "data"

    @property
    def server_dir(self) -> Path:
        return self.barman_home / self.server

    @property
    def venv(self) -> Path:
        return self.home / "engine"

    @property
    def state_dir(self) -> Path:
        """aegisctl's own records (drill results) beside Barman's."""
        return self.home / "aegisctl" / self.server

    def executable(self) -> Path:
        if self.barman_path:
            return Path(self.barman_path)
        return self.venv / "bin" / "barman"

    def installed(self) -> bool:
        if self.barman_path:
            return Path(self.barman_path).exists()
        return (self.venv / ".aegisctl-complete").exists() and self.executable().exists()

    # -- identity -------------------------------------------------------------------------

    def runs_as(self) -> str | None:
        """The user Barman runs as (None: the current one), as recorded when installed."""
        if self.run_as is None or self.barman_path:
            return self.run_as
        try:
            recorded = (self.venv / ".aegisctl-complete").read_text().splitlines()
        except OSError:
            return self.run_as
        return None if len(recorded) > 1 and recorded[1] in ("root", "self") else self.run_as

    def server_ids(self) -> tuple[int, int] | None:
        """The user restored servers run as (the embedded server's)."""
        return self._ids(self.run_as)

    def ids(self) -> tuple[int, int] | None:
        return self._ids(self.runs_as())

    def _ids(self, user: str | None) -> tuple[int, int] | None:
        if user is None:
            return None
        import pwd

        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(
                f"user '{user}' (Barman and restored servers run as it) does not exist",
                hint="start the embedded server once (aegisctl local start) or create the user",
            ) from None
        return entry.pw_uid, entry.pw_gid

    def chown(self, path: Path) -> None:
        ids = self.ids()
        if ids:
            os.chown(path, *ids)

    def make_dir(self, path: Path, mode: int = 0o700) -> Path:
        """A folder owned by Barman's user (created with its parents up to `home`)."""
        missing = [p for p in [path, *path.parents] if not p.exists()]
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        for created in missing:
            if created == self.home or self.home in created.parents:
                self.chown(created)
        self._let_enter()
        return path

    def _let_enter(self) -> None:
        """As root, the default home sits in the target's backup folder (0700, root's): let
        Barman's and the restored servers' user enter (o+x: pass through, not list; the
        backups there are 0600) the folders from the backup root down to the home."""
        if self.enter_from is None or (self.ids() is None and self.server_ids() is None):
            return
        root = self.enter_from
        folders = [p for p in reversed(self.home.parents) if p == root or root in p.parents]
        for folder in folders:
            info = folder.stat()
            if info.st_uid == os.geteuid() and not info.st_mode & 0o001:
                folder.chmod((info.st_mode & 0o7777) | 0o001)

    # -- running Barman -------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items()
                if k in ("PATH", "LANG", "LC_ALL", "TZ") and v}
        return {**keep, "HOME": str(self.home), "PGAPPNAME": "aegisctl barman"}

    def argv(self, *args: str, json_output: bool = False) -> list[str]:
        out = [str(self.executable()), "-c", str(self.config_file)]
        out += ["-f", "json"] if json_output else ["-q"]
        return [*out, *args]

    def run(self, *args: str, what: str, timeout: float | None = 3600,
            check: bool = True, json_output: bool = False) -> subprocess.CompletedProcess[str]:
        if not self.installed():
            raise MissingBinary(
                f"Barman is not installed ({self.executable()})",
                hint="aegisctl backup physical enable installs it",
            )
        ids = self.ids()
        log.info("running %s", " ".join(args))
        try:
            done = subprocess.run(
                self.argv(*args, json_output=json_output), capture_output=True, text=True,
                env=self.env(), cwd=self.home,
                user=ids[0] if ids else None, group=ids[1] if ids else None,
                extra_groups=[] if ids else None, timeout=timeout,
                preexec_fn=die_with_parent(),
            )
        except subprocess.TimeoutExpired:
            raise OperationFailed(f"cannot {what}: Barman did not finish in {timeout:.0f} s") \
                from None
        if check and done.returncode != 0:
            raise OperationFailed(f"cannot {what}: {self.explain(done)}")
        return done

    def explain(self, done: subprocess.CompletedProcess[str]) -> str:
        """Barman's last error line, from its log when its output only points there."""
        line = last_line(done)
        if "log file" not in line:
            return line
        try:
            lines = (self.home / "log" / "barman.log").read_text(errors="replace").splitlines()
        except OSError:
            return line
        errors = [ln for ln in lines[-200:] if " ERROR " in ln or "Exception:" in ln]
        return errors[-1].split(" ERROR ", 1)[-1].strip()[:500] if errors else line

    def run_json(self, *args: str, what: str, timeout: float | None = 600) -> Any:
        done = self.run(*args, what=what, timeout=timeout, check=False, json_output=True)
        try:
            data = json.loads(done.stdout or "null")
        except json.JSONDecodeError:
            raise OperationFailed(f"cannot {what}: {last_line(done)}") from None
        if done.returncode != 0 and not data:
            raise OperationFailed(f"cannot {what}: {last_line(done)}")
        return data

    def popen(self, *args: str, log_file: Path) -> subprocess.Popen[str]:
        """A long-running Barman command in its own process group, its output to `log_file`
        (a pipe nobody reads would fill and block it)."""
        ids = self.ids()
        with open(log_file, "a") as log_handle:
            return subprocess.Popen(
                self.argv(*args), text=True, env=self.env(), cwd=self.home,
                stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                user=ids[0] if ids else None, group=ids[1] if ids else None,
                extra_groups=[] if ids else None, start_new_session=True,
                preexec_fn=die_with_parent(),  # no orphaned streamer holds the slot
            )


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    """The line that says why: the last error line, a heading such as `pg_basebackup error:`
    joined to the line that follows it (never shown alone, with nothing after it)."""
    from aegisctl.children import exit_cause

    lines: list[str] = []
    for line in ((done.stderr or "") + "\n" + (done.stdout or "")).splitlines():
        if not line.strip():
            continue
        if lines and lines[-1].endswith(":"):
            lines[-1] = f"{lines[-1]} {line.strip()}"
        else:
            lines.append(line.strip())
    lines = [ln for ln in lines if not ln.endswith(":")]  # a heading nothing followed
    errors = [ln for ln in lines if "ERROR" in ln or "FATAL" in ln or "error" in ln]
    if done.returncode < 0:
        return exit_cause(done.returncode)
    return (errors or lines or [exit_cause(done.returncode)])[-1][:500]


def engine_for(loaded: LoadedConfig, target: Target, *,
               system_id: str | None = None) -> Engine:
    """The Barman home and server of this target's database system (see identity.py): raises
    ConfigError in one line when the home holds another database system's backups."""
    from aegisctl.backup.physical.identity import own_home, place
    from aegisctl.local import server_for

    settings = loaded.settings
    physical = settings.backup.physical
    if not _SLOT_NAME.match(physical.slot_name):
        raise ConfigError(
            f"backup.physical.slot_name '{physical.slot_name}' is not a valid slot name",
            hint="lower-case letters, digits and _ (at most 63)",
        )
    placement = place(loaded, target, system_id=system_id)
    default_home, configured = own_home(loaded, target)
    run_as = (physical.run_as or settings.embedded.run_as) if is_root() else None
    server = server_for(settings.embedded.data_dir, settings.embedded.database,
                        settings.embedded.run_as)
    enter_from = None
    if not configured and placement.home == default_home:
        enter_from = default_home.parent.parent  # the backup root
    return Engine(home=placement.home, server=placement.server, run_as=run_as,
                  barman_path=physical.barman_path, version=physical.barman_version,
                  slot_name=physical.slot_name, bin_dir=server._runtime_dir(),
                  system_id=placement.system_id, legacy=placement.legacy,
                  enter_from=enter_from)


# ---------------------------------------------------------------------------------------------
# Installing


def install_engine(engine: Engine, python: str | None = None) -> str:
    """Create the private environment and install Barman into it; returns its version.

    A virtual environment records its own path, so it is built in place; a marker written last
    says it is complete, and a half-built one is removed and rebuilt."""
    if engine.barman_path:
        if not Path(engine.barman_path).exists():
            raise MissingBinary(f"backup.physical.barman_path {engine.barman_path} does not exist")
        return barman_version(engine)
    marker = engine.venv / ".aegisctl-complete"
    if engine.installed():
        return barman_version(engine)
    engine.make_dir(engine.home, 0o755)
    shutil.rmtree(engine.venv, ignore_errors=True)
    python, runs_as = _interpreter_for(engine, python)
    pip = [str(engine.venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    steps = [
        ([python, "-m", "venv", str(engine.venv)], "create its environment"),
        ([*pip, *_ENGINE_DEPS], "install psycopg2-binary and Barman's dependencies"),
        ([*pip, "--no-deps", f"barman=={engine.version}"], f"install barman {engine.version}"),
    ]
    try:
        for argv, what in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise OperationFailed(f"cannot install Barman: {what} failed: {last_line(done)}")
        # Barman's user must be able to run it (the folder may sit under a 0700 parent).
        for path in [engine.venv, *engine.venv.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o755)
        marker.write_text(f"{engine.version}\n{runs_as}\n")
    except BaseException:
        shutil.rmtree(engine.venv, ignore_errors=True)
        raise
    return barman_version(engine)


def _interpreter_for(engine: Engine, python: str | None) -> tuple[str, str]:
    """A Python that Barman's user can run (a pyenv under /root is out of its reach), and the
    user Barman will run as: the unprivileged one when possible, else root (then restored
    directories are handed to the server's user before it starts)."""
    from aegisctl.local import _reachable_by_others

    candidates = [python] if python else [sys.executable, "/usr/bin/python3"]
    if engine.run_as is None:
        return candidates[0] or sys.executable, "self"
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys, venv, ensurepip; print(sys.base_prefix)"],
            capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            continue
        base = Path(probe.stdout.strip())
        if (_reachable_by_others(base / "lib") is None
                and _reachable_by_others(Path(candidate).resolve()) is None):
            return candidate, engine.run_as
    log.warning("no Python that user %s can run: Barman will run as root", engine.run_as)
    return sys.executable, "root"


def barman_version(engine: Engine) -> str:
    done = subprocess.run([str(engine.executable()), "--version"], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        raise MissingBinary(f"{engine.executable()} does not run: {last_line(done)}")
    return (done.stdout or done.stderr).split()[0]


# ---------------------------------------------------------------------------------------------
# Configuration: written from aegisctl's YAML, never edited by hand


def conninfo_for(settings: Settings, target: Target, engine: Engine) -> str:
    """libpq key=value conninfo Barman uses; a password goes to a passfile, never here."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if target.embedded:
        from aegisctl.local import SUPERUSER, server_for

        status = server_for(settings.embedded.data_dir, settings.embedded.database,
                            settings.embedded.run_as).ensure_running()
        return make_conninfo(host=status.socket_dir or "", port=str(status.port or 5432),
                             user=SUPERUSER, dbname=settings.embedded.database)
    dsn = target.direct_dsn or target.dsn
    if target.cluster is not None:  # the member leading now (physical/ha.py)
        from aegisctl.backup.physical.ha import leader_dsn

        dsn = leader_dsn(target)
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    password = params.pop("password", None) or target.password
    if password:
        passfile = engine.home / "pgpass"
        line = ":".join(p.replace("\\", "\\\\").replace(":", "\\:") for p in (
            "*", "*", "*", params.get("user", "*"), password))
        write_file(engine, passfile, line + "\n", 0o600)
        params["passfile"] = str(passfile)
    return make_conninfo(**params)


def write_file(engine: Engine, path: Path, text: str, mode: int = 0o644) -> None:
    """Written to a temporary name, owned by Barman's user, renamed into place."""
    engine.make_dir(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    engine.chown(tmp)
    os.replace(tmp, path)


def _ini(sections: dict[str, dict[str, str]], header: str) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    for name, values in sections.items():
        parser[name] = values
    import io

    buf = io.StringIO()
    parser.write(buf)
    return header + buf.getvalue()


def write_config(loaded: LoadedConfig, target: Target, engine: Engine) -> list[Path]:
    """barman.conf and barman.d/<server>.conf, from backup.physical (one source of truth)."""
    physical = loaded.settings.backup.physical
    header = "# Written by aegisctl from its YAML config (backup.physical); edits are overwritten.\n"
    engine.make_dir(engine.home, 0o755)
    for folder in (engine.barman_home, engine.home / "log", engine.home / "barman.d"):
        engine.make_dir(folder)
    user = engine.runs_as() or _current_user()
    main = {"barman": {
        "barman_home": str(engine.barman_home),
        "barman_user": user,
        "log_file": str(engine.home / "log" / "barman.log"),
        "log_level": "INFO",
        "configuration_files_directory": str(engine.home / "barman.d"),
        "path_prefix": str(engine.bin_dir),
    }}
    conninfo = conninfo_for(loaded.settings, target, engine)
    server = {engine.server: {
        "description": f"aegisctl target {target.name}",
        "conninfo": conninfo,
        "streaming_conninfo": conninfo,
        "backup_method": "postgres",
        "streaming_archiver": "on",
        "slot_name": engine.slot_name,
        # aegisctl creates the slot itself, with WAL reserved from the start.
        "create_slot": "manual",
        "path_prefix": str(engine.bin_dir),
        "compression": "gzip" if physical.compress_wal else "",
        # aegisctl's retention prunes whole chains; Barman keeps what it is told to.
        "minimum_redundancy": "0",
        "archiver": "off",
        # A fast checkpoint at the start: otherwise pg_basebackup waits for a spread one
        # (minutes on an idle server).
        "immediate_checkpoint": "true" if physical.immediate_checkpoint else "false",
    }}
    if not physical.compress_wal:
        del server[engine.server]["compression"]
    write_file(engine, engine.config_file, _ini(main, header))
    write_file(engine, engine.server_config, _ini(server, header))
    return [engine.config_file, engine.server_config]


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
