"""Fixtures for the backup tests: an S3 endpoint (moto in server mode on 127.0.0.1), a filled
Aegis database, and a config pointing both at this test's folder."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"aegis-{random.randrange(1 << 30):x}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    return bucket


def vector(rng: random.Random, dim: int = 1536) -> str:
    return "[" + ",".join(f"{rng.uniform(-1, 1):.7g}" for _ in range(dim)) + "]"


def fill(conn: psycopg.Connection[Any], rows: int = 40, seed: int = 7) -> None:
    """A few rows in memory and operational tables, with 1536-d embeddings."""
    rng = random.Random(seed)
    conn.autocommit = True
    with conn.cursor() as cur:
        for i in range(rows):
            cur.execute(
                "INSERT INTO episodic_memory (event_type, summary, embedding, importance)"
                " VALUES (%s, %s, %s::vector, %s)",
                (rng.choice(["task", "error", "chat"]), f"event {i} {rng.random()}",
                 vector(rng), rng.choice(["low", "medium", "high"])))
        for i in range(rows // 2):
            cur.execute("INSERT INTO semantic_memory (concept, content, embedding)"
                        " VALUES (%s, %s, %s::vector)", (f"c{i}", f"content {i}", vector(rng)))
        for i in range(rows):
            cur.execute("INSERT INTO container_metrics (container_name, cpu_percent)"
                        " VALUES (%s, %s)", (f"ctr{i % 3}", rng.random() * 100))


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every user table's rows (vectors as their binary form), ordered."""
    tables = conn.execute(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1").fetchall()
    result = {}
    for (name,) in tables:
        cols = conn.execute(
            "SELECT attname, atttypid = to_regtype('vector') FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (name,)).fetchall()
        exprs = [f'vector_send("{c}")' if is_vec else f'"{c}"::text' for c, is_vec in cols]
        result[name] = conn.execute(
            f"SELECT {', '.join(exprs)} FROM {name} ORDER BY 1").fetchall()
    return result


def first_vector_bytes(conn: psycopg.Connection[Any]) -> bytes:
    row = conn.execute("SELECT vector_send(embedding) FROM episodic_memory ORDER BY id LIMIT 1"
                       ).fetchone()
    assert row is not None
    raw = bytes(row[0])
    assert struct.unpack(">H", raw[:2])[0] == 1536
    return raw


@pytest.fixture
def backup_config(write_config: Callable[..., Path], aegis_dsn: str,
                  tmp_path: Path) -> Callable[..., Path]:
    """backup_config(**backup_section) -> a config file for this test's Aegis database."""

    def make(name: str = "aegisctl.yaml", **backup: Any) -> Path:
        section = {"directory": str(tmp_path / "backups"), **backup}
        return write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                             "connection": {"retry": {"attempts": 1}},
                             "backup": section}, name=name)

    return make
