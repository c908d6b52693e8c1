"""A separate PostgreSQL server (the embedded binaries, started by the test) reached over TCP
with a SCRAM password, as an external `targets:` entry: physical backups of a server aegisctl
does not run itself."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from aegisctl.local import EmbeddedServer

ROLE = "backup_admin"
# TCP with a SCRAM password only: no local line at all, so nothing (the drill's restored copy
# included) can rely on a trusted socket of the source.
NO_REPLICATION_HBA = "host all all 127.0.0.1/32 scram-sha-256\n"
REPLICATION_HBA = NO_REPLICATION_HBA + f"host replication {ROLE} 127.0.0.1/32 scram-sha-256\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ExternalEnv:
    base: Path
    config: Path
    server: EmbeddedServer
    port: int
    password: str

    def as_role(self) -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname="aegis",
                               password=self.password, autocommit=True)

    def set_hba(self, text: str) -> None:
        hba = self.server.data_dir / "pg_hba.conf"
        hba.write_text(text)
        self.server._run([self.server._bin("pg_ctl"), "-D", str(self.server.data_dir),
                          "reload"], "reload the external test server")

    def restart(self) -> None:
        self.server.stop()
        self.start()

    def start(self) -> None:
        socket_dir = self.base / "ext-run"
        self.server._run(
            [self.server._bin("pg_ctl"), "-D", str(self.server.data_dir), "-w", "-t", "60",
             "-l", str(self.server.log_file), "-o",
             f"-p {self.port} -k {socket_dir} -c listen_addresses=127.0.0.1", "start"],
            "start the external test server")


@pytest.fixture(scope="module")
def external_env() -> Iterator[ExternalEnv]:
    base = Path(tempfile.mkdtemp(prefix="aegisctl-physical-ext-"))
    base.chmod(0o755)
    server = EmbeddedServer(base / "ext" / "pgdata", database="aegis")
    password = "pw:" + secrets.token_urlsafe(12) + " \\'x"  # quoting-hostile on purpose
    env = ExternalEnv(base, base / "aegisctl.yaml", server, free_port(), password)
    try:
        server.ensure_running()  # initdb + database, on the private socket
        with psycopg.connect(server.uri(), autocommit=True) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD "
                         + psycopg.sql.quote(password, conn))
        server.stop()
        (base / "ext-run").mkdir(mode=0o700)
        ids = server._service_uid()
        if ids:
            os.chown(base / "ext-run", *ids)
        # Not ready for physical backups in two ways a DBA meets: settings that only a
        # restart applies, and a pg_hba.conf without a replication line.
        with open(server.data_dir / "postgresql.auto.conf", "a") as auto:
            auto.write("wal_level = minimal\nmax_wal_senders = 0\n")
        (server.data_dir / "pg_hba.conf").write_text(NO_REPLICATION_HBA)
        if ids:
            os.chown(server.data_dir / "pg_hba.conf", *ids)
        env.start()
        with env.as_role() as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute("CREATE TABLE mem (id bigserial PRIMARY KEY, note text NOT NULL, "
                         "emb vector(1536))")
            conn.execute(
                "INSERT INTO mem (note, emb) SELECT 'ext' || g, (SELECT array_agg(random() + "
                "0 * x + 0 * g)::vector(1536) FROM generate_series(1, 1536) x) "
                "FROM generate_series(1, 200) g")
            conn.execute("CREATE INDEX mem_emb_hnsw ON mem USING hnsw (emb vector_cosine_ops)")
        password_file = base / "ext.password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        env.config.write_text(yaml.safe_dump({
            "targets": {"ext": {
                "dsn": f"postgresql://{ROLE}@127.0.0.1:{env.port}/aegis?sslmode=disable",
                "password_file": str(password_file)}},
            "default_target": "ext",
            # Never started: only its binaries (pg_basebackup, pg_ctl for the drill) are used.
            "embedded": {"data_dir": str(base / "embedded" / "pgdata")},
            "backup": {"directory": str(base / "backups"),
                       "physical": {"directory": str(base / "barman"),
                                    "archive_interval": "2s",
                                    "max_slot_wal_keep_size": "1GB"}},
        }))
        yield env
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
