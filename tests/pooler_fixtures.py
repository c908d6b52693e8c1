"""A real PgBouncer (Debian's `pgbouncer`) in front of the test server, for the pooler tests.

One PgBouncer per test module, on 127.0.0.1 and a free port, serving one database of the test
server under three names: `tx` (transaction pooling, 2 server connections), `sess` (session
pooling) and its admin console `pgbouncer`. PgBouncer refuses to run as root: as root it runs
as the user owning the server's socket folder (the embedded server's own user).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(host: str) -> str | None:
    if os.geteuid() != 0:
        return None
    if host.startswith("/") and Path(host).is_dir():
        return pwd.getpwuid(Path(host).stat().st_uid).pw_name
    return "nobody"


@dataclass
class PgBouncer:
    folder: Path
    port: int
    process: subprocess.Popen[bytes]
    database: str

    def dsn(self, alias: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{alias}"

    def admin(self) -> psycopg.Connection[Any]:
        # The admin console speaks only the simple query protocol, outside transactions.
        return psycopg.connect(self.dsn("pgbouncer"), autocommit=True, prepare_threshold=None)

    def stop(self) -> None:
        # As root pgbouncer runs under runuser, which exits on SIGINT without passing it on:
        # signal the whole process group (start_new_session made it ours) so no pgbouncer
        # outlives the test.
        group = self.process.pid
        _signal_group(group, signal.SIGINT)  # shut down at once
        deadline = time.monotonic() + 10
        while _group_alive(group) and time.monotonic() < deadline:
            self.process.poll()
            time.sleep(0.05)
        if _group_alive(group):
            _signal_group(group, signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def start_pgbouncer(host: str, port: int, user: str, password: str | None,
                    database: str, tx_pool_size: int = 2) -> PgBouncer:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    folder = Path(tempfile.mkdtemp(prefix="aegisctl-pgbouncer-"))
    folder.chmod(0o755)
    listen = _free_port()
    server = f"host={host} port={port} user={user} dbname={database}"
    if password:
        server += f" password={password}"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(f"""\
[databases]
tx = {server} pool_mode=transaction pool_size={tx_pool_size}
sess = {server} pool_mode=session pool_size=20

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
admin_users = {user}
stats_users = {user}
max_client_conn = 200
logfile = {folder / "pgbouncer.log"}
""")
    run_as = _run_as(host)
    argv = [binary, str(folder / "pgbouncer.ini")]
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (folder, *folder.iterdir()):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        argv = ["runuser", "-u", run_as, "--", *argv]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    bouncer = PgBouncer(folder, listen, process, database)
    deadline = time.monotonic() + 15
    while True:
        try:
            with bouncer.admin() as admin:
                admin.execute("SHOW VERSION")
            return bouncer
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                log = (folder / "pgbouncer.log")
                detail = log.read_text()[-2000:] if log.exists() else ""
                bouncer.stop()
                raise RuntimeError(f"pgbouncer did not start: {detail}") from None
            time.sleep(0.1)


def clone_database(executor: Any, template: str, name: str) -> None:
    """`name` as a fresh copy of `template` on the test server."""
    with psycopg.connect(host=executor.host, port=executor.port, user=executor.user,
                         password=executor.password,
                         dbname=getattr(executor, "maintenance_dbname", "postgres"),
                         autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)))


def drop_database(executor: Any, name: str) -> None:
    with psycopg.connect(host=executor.host, port=executor.port, user=executor.user,
                         password=executor.password,
                         dbname=getattr(executor, "maintenance_dbname", "postgres"),
                         autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def direct_dsn(executor: Any, database: str) -> str:
    host = executor.host
    auth = executor.user + (f":{executor.password}" if executor.password else "")
    if host.startswith("/"):
        return f"postgresql://{auth}@/{database}?host={host}&port={executor.port}"
    return f"postgresql://{auth}@{host}:{executor.port}/{database}"
