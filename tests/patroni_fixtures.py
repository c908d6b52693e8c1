"""A real two-member Patroni cluster on 127.0.0.1, for the high-availability tests.

etcd (Debian's `etcd-server`) is the DCS; Patroni (PyPI, `patroni[etcd3,psycopg3]`) runs each
member from the embedded PostgreSQL binaries. As root, PostgreSQL refuses to run, so Patroni
runs as the embedded server's system user: that user cannot enter a venv under /root (or the
0700 folder CI copies the checkout into), so the Python packages Patroni needs are copied next
to the cluster, and a Python interpreter that user can run executes them.

One cluster per test module (`patroni_cluster`, module-scoped); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from packaging.requirements import Requirement

from aegisctl.local import EmbeddedServer, _reachable_by_others

SCOPE = "aegis"
TTL = 20
LOOP_WAIT = 2
RETRY_TIMEOUT = 5
STARTUP_TIMEOUT = 120.0
CHANGE_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """probe() until it returns something truthy; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as exc:  # the member may be restarting: keep probing until the deadline
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(every)


def http_json(url: str, timeout: float = 3.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, None


# ---------------------------------------------------------------------------------------------
# Patroni's Python packages, where the server's user can run them


def _distributions(root: str, extras: tuple[str, ...]) -> set[str]:
    """`root` and everything it needs (with `extras`), as installed distribution names."""
    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            try:
                metadata.distribution(req.name)
            except metadata.PackageNotFoundError:
                continue  # an optional dependency this Python does not use
            todo.append((req.name, tuple(sorted(req.extras))))
    return seen


def copy_patroni_packages(dest: Path) -> Path:
    """Copy the files of Patroni and its dependencies into dest/site; return that folder."""
    site = dest / "site"
    for name in sorted(_distributions("patroni", ("etcd3", "psycopg3"))):
        dist = metadata.distribution(name)
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if file.parts[0] == ".." or not source.is_file() or "__pycache__" in file.parts:
                continue  # console scripts live outside site-packages
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for path in [site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else path.stat().st_mode | 0o444)
    return site


def interpreter_for(user_ids: tuple[int, int] | None) -> str:
    """A Python of this test run's version that the server's user can execute."""
    ours = sys.version_info[:2]
    candidates = [getattr(sys, "_base_executable", sys.executable), sys.executable,
                  shutil.which("python3") or "", "/usr/bin/python3",
                  f"/usr/bin/python{ours[0]}.{ours[1]}"]
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        if user_ids is not None and _reachable_by_others(Path(candidate).resolve()) is not None:
            continue
        done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30,
                              user=user_ids[0] if user_ids else None,
                              group=user_ids[1] if user_ids else None,
                              extra_groups=[] if user_ids else None, cwd="/")
        if done.returncode == 0 and done.stdout.strip() == str(ours):
            return candidate
    pytest.skip(f"no Python {ours[0]}.{ours[1]} that the server's user can run (for Patroni)")


# ---------------------------------------------------------------------------------------------
# The cluster


@dataclass
class Member:
    name: str
    pg_port: int
    api_port: int
    home: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def is_primary(self) -> bool:
        return http_json(f"{self.api_url}/primary")[0] == 200


@dataclass
class PatroniCluster:
    base: Path
    etcd_port: int
    members: list[Member]
    python: str
    site: Path
    bin_dir: Path
    user_ids: tuple[int, int] | None
    etcd: subprocess.Popen[bytes] | None = None
    ctl_config: Path = field(default_factory=Path)
    promoted_at: float = 0.0  # time.monotonic() when the last change's new leader took writes

    @property
    def urls(self) -> list[str]:
        return [m.api_url for m in self.members]

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def cluster(self) -> dict[str, Any]:
        for member in self.members:
            try:
                status, body = http_json(f"{member.api_url}/cluster")
            except OSError:
                continue
            if status == 200:
                return dict(body)
        raise AssertionError("no member's REST API answers /cluster")

    def leader(self) -> Member:
        return wait_for("a leader accepting writes", self._writable_leader, CHANGE_TIMEOUT)

    def _writable_leader(self) -> Member | None:
        for member in self.members:
            try:
                if not member.is_primary():
                    continue
                with member.connect() as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row == (False,):
                    return member
            except (OSError, psycopg.Error):
                continue
        return None

    def replica(self) -> Member:
        leader = self.leader()
        return next(m for m in self.members if m is not leader)

    def wait_streaming(self, timeout: float = CHANGE_TIMEOUT) -> None:
        """Until every member other than the leader streams from it."""
        def all_streaming() -> bool:
            members = self.cluster().get("members", [])
            replicas = [m for m in members if m.get("role") != "leader"]
            return (len(members) == len(self.members)
                    and any(m.get("role") == "leader" for m in members)
                    and all(m.get("state") == "streaming" for m in replicas))
        wait_for("every replica streaming", all_streaming, timeout)

    def patronictl(self, *args: str) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).with_name("patronictl")
        return subprocess.run([str(exe), "-c", str(self.ctl_config), *args], capture_output=True,
                              text=True, timeout=120)

    def switchover(self) -> tuple[Member, Member]:
        """A planned switchover to the replica; returns (old leader, new leader) once the new
        one accepts writes and the old one streams from it."""
        old, new = self.leader(), self.replica()
        done = self.patronictl("switchover", SCOPE, "--leader", old.name, "--candidate",
                               new.name, "--force")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(f"{new.name} to lead", lambda: self._writable_leader() is new, CHANGE_TIMEOUT)
        self.promoted_at = time.monotonic()
        self.wait_streaming()
        return old, new

    def kill_leader(self) -> tuple[Member, Member]:
        """kill -9 of the leader's Patroni and postmaster; waits for the replica to take over,
        then restarts the old member (it rejoins as a replica). Returns (old, new)."""
        old, new = self.leader(), self.replica()
        pid = old.postmaster_pid()
        assert old.process is not None
        os.killpg(old.process.pid, signal.SIGKILL)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        old.process.wait(30)
        wait_for(f"{new.name} to take over", lambda: self._writable_leader() is new,
                 TTL * 3 + CHANGE_TIMEOUT)
        self.promoted_at = time.monotonic()
        self.start_member(old)
        self.wait_streaming()
        return old, new

    def start_member(self, member: Member) -> None:
        log = open(member.home / "patroni.log", "ab")  # noqa: SIM115 - handed to the child
        env = {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(self.site),
               "HOME": str(member.home), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        ids = self.user_ids
        member.process = subprocess.Popen(
            [self.python, "-m", "patroni", str(member.config)], stdout=log, stderr=log,
            env=env, cwd=str(member.home), start_new_session=True,
            user=ids[0] if ids else None, group=ids[1] if ids else None,
            extra_groups=[] if ids else None)
        log.close()

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.terminate()
        for member in self.members:
            if member.process is None:
                continue
            try:
                member.process.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(member.process.pid, signal.SIGKILL)
                member.process.wait(10)
            pid = member.postmaster_pid()
            if pid:  # Patroni was killed before its postmaster stopped
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(20)
            except subprocess.TimeoutExpired:
                self.etcd.kill()

    def logs(self) -> str:
        parts = []
        for member in self.members:
            path = member.home / "patroni.log"
            if path.exists():
                parts.append(f"--- {member.name}\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)


def _member_config(cluster_base: Path, name: str, pg_port: int, api_port: int, etcd_port: int,
                   bin_dir: Path) -> dict[str, Any]:
    home = cluster_base / name
    # Replication for every user: the members' own (replicator) and Barman's WAL streamer
    # and base backups (postgres) in the physical backup tests.
    hba = ["local all all trust", "host all all 127.0.0.1/32 trust",
           "host replication all 127.0.0.1/32 trust"]
    return {
        "scope": SCOPE,
        "name": name,
        "log": {"level": "INFO"},
        "restapi": {"listen": f"127.0.0.1:{api_port}", "connect_address": f"127.0.0.1:{api_port}"},
        "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                "maximum_lag_on_failover": 64 * 1024 * 1024,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "wal_level": "replica", "hot_standby": "on", "max_wal_senders": 10,
                        "max_replication_slots": 10, "wal_log_hints": "on",
                        "max_connections": 60, "shared_buffers": "32MB",
                        "shared_preload_libraries": "pg_stat_statements",
                        "hot_standby_feedback": "on",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale-provider": "builtin"},
                       {"builtin-locale": "C.UTF-8"}, {"username": "postgres"}],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{pg_port}",
            "connect_address": f"127.0.0.1:{pg_port}",
            "data_dir": str(home / "data"),
            "bin_dir": str(bin_dir),
            "pgpass": str(home / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": "postgres"},
                "replication": {"username": "replicator", "password": "replicator"},
                "rewind": {"username": "postgres", "password": "postgres"},
            },
            "parameters": {"unix_socket_directories": str(home / "run")},
            "pg_hba": hba,
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }


def start_cluster(size: int = 2) -> PatroniCluster:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    base = Path(tempfile.mkdtemp(prefix="aegisctl-patroni-", dir="/var/tmp"))
    base.chmod(0o755)
    probe = EmbeddedServer(base / "probe" / "data")
    ids = probe._service_uid()
    bin_dir = probe._runtime_dir()
    site = copy_patroni_packages(base)
    python = interpreter_for(ids)
    etcd_port, peer_port = free_port(), free_port()
    (base / "etcd").mkdir(mode=0o700)
    etcd_log = open(base / "etcd.log", "ab")  # noqa: SIM115 - handed to the child
    etcd = subprocess.Popen(
        ["etcd", "--name", "aegis-test", "--data-dir", str(base / "etcd" / "data"),
         "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
         "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-cluster", f"aegis-test=http://127.0.0.1:{peer_port}",
         "--enable-v2=true"],
        stdout=etcd_log, stderr=etcd_log, start_new_session=True)
    etcd_log.close()
    members = []
    for index in range(size):
        name = f"m{index}"
        home = base / name
        home.mkdir(mode=0o700)
        (home / "run").mkdir(mode=0o700)
        pg_port, api_port = free_port(), free_port()
        config = home / "patroni.yml"
        config.write_text(yaml.safe_dump(
            _member_config(base, name, pg_port, api_port, etcd_port, bin_dir)))
        if ids:
            for path in (home, home / "run", config):
                os.chown(path, *ids)
        members.append(Member(name, pg_port, api_port, home, config))
    cluster = PatroniCluster(base=base, etcd_port=etcd_port, members=members, python=python,
                             site=site, bin_dir=bin_dir, user_ids=ids, etcd=etcd)
    cluster.ctl_config = base / "patronictl.yml"
    cluster.ctl_config.write_text(yaml.safe_dump({
        "scope": SCOPE, "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"]}}))
    try:
        wait_for("etcd", lambda: http_json(f"http://127.0.0.1:{etcd_port}/health")[0] == 200, 30)
        # The first member bootstraps alone (initdb), then the others clone it.
        cluster.start_member(members[0])
        wait_for("the first member to lead", cluster._writable_leader, STARTUP_TIMEOUT)
        for member in members[1:]:
            cluster.start_member(member)
        cluster.wait_streaming(STARTUP_TIMEOUT)
    except BaseException:
        logs = cluster.logs()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise AssertionError("the Patroni cluster did not start:\n" + logs) from None
    return cluster


@pytest.fixture(scope="module")
def patroni_cluster() -> Iterator[PatroniCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)
