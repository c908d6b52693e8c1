"""A dedicated embedded server with physical backups enabled and WAL streamed, for the
physical backup tests (they change server settings and back up the whole cluster, so they do
not share the session's server)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from aegisctl.backup.physical.engine import Engine, engine_for
from aegisctl.backup.physical.setup import enable_physical
from aegisctl.backup.physical.wal import stream_wal
from aegisctl.config import LoadedConfig, load_config
from aegisctl.local import EmbeddedServer
from aegisctl.targets import Target, resolve_target


@dataclass
class PhysicalEnv:
    base: Path
    config: Path
    loaded: LoadedConfig
    target: Target
    engine: Engine
    server: EmbeddedServer
    stop: threading.Event | None = None
    thread: threading.Thread | None = None

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.server.uri(), autocommit=True)

    def start_streaming(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=stream_wal, args=(self.loaded, self.target), kwargs={"stop": self.stop},
            daemon=True)
        self.thread.start()
        # Until the receiver holds the slot: a backup refuses to start without streaming.
        deadline = time.monotonic() + 60
        while True:
            with self.connect() as conn:
                row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                   (self.engine.slot_name,)).fetchone()
            if row == (True,):
                return
            assert time.monotonic() < deadline, "the WAL streamer did not connect"
            time.sleep(0.3)

    def stop_streaming(self) -> None:
        if self.stop and self.thread:
            self.stop.set()
            self.thread.join(120)
        self.stop = self.thread = None


def insert_rows(conn: psycopg.Connection[Any], count: int, note: str) -> None:
    conn.execute(
        "INSERT INTO mem (note, emb) SELECT %s || g, "
        "(SELECT array_agg(random() + 0 * x + 0 * g)::vector(1536) FROM generate_series(1, 1536) x) "
        "FROM generate_series(1, %s) g", (note, count))


def fingerprint(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    row = conn.execute("SELECT count(*), md5(coalesce(string_agg(id || ':' || note, ',' "
                       "ORDER BY id), '')) FROM mem").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


@pytest.fixture(scope="module")
def physical_env() -> Iterator[PhysicalEnv]:
    base = Path(tempfile.mkdtemp(prefix="aegisctl-physical-"))
    base.chmod(0o755)
    config = base / "aegisctl.yaml"
    config.write_text(yaml.safe_dump({
        "embedded": {"data_dir": str(base / "pgdata"), "database": "aegis"},
        "backup": {"directory": str(base / "backups"),
                   "physical": {"directory": str(base / "barman"), "archive_interval": "2s",
                                "max_slot_wal_keep_size": "2GB"}},
    }))
    loaded = load_config(str(config))
    target = resolve_target(loaded, env={})
    server = EmbeddedServer(base / "pgdata", database="aegis")
    server.ensure_running()
    env = PhysicalEnv(base, config, loaded, target, engine_for(loaded, target), server)
    try:
        result = enable_physical(loaded, target)
        assert result.configured, result.to_json()
        with env.connect() as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute("CREATE TABLE mem (id bigserial PRIMARY KEY, note text NOT NULL, "
                         "emb vector(1536))")
            insert_rows(conn, 300, "base")
            conn.execute("CREATE INDEX mem_emb_hnsw ON mem USING hnsw (emb vector_cosine_ops)")
        env.start_streaming()
        yield env
    finally:
        env.stop_streaming()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
