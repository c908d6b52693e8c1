"""Fixtures for the memory tests: a migrated database with 32-dimension embeddings (small and
fast), a real OpenAI-protocol embedding server, and configs pointing at both.

Test modules import these names (pytest finds fixtures in the module's namespace).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import dsn_of
from embedding_server import EmbeddingServer, embed
from pytest_postgresql import factories

DIM = 32
KEY_ENV = "AEGIS_TEST_EMBEDDING_KEY"


def _load_memory_schema(host: str, port: int, user: str, dbname: str,
                        password: str | None = None, **_: Any) -> None:
    from aegisctl.config import SchemaSettings
    from aegisctl.schema import init_schema

    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, password=password,
                         autocommit=True) as conn:
        init_schema(conn, SchemaSettings(embedding_dim=DIM), wait_lock=60)


memory_template = factories.postgresql_noproc(depends_on="pg_server", dbname="aegis_memory32",
                                              load=[_load_memory_schema])
memory_db = factories.postgresql("memory_template")


@pytest.fixture
def memory_dsn(memory_db: psycopg.Connection[Any]) -> str:
    return dsn_of(memory_db)


@pytest.fixture
def embedding_server() -> Iterator[EmbeddingServer]:
    server = EmbeddingServer(dim=DIM).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def memory_settings(memory_dsn: str, embedding_server: EmbeddingServer,
                    monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Config as a dict (tests adjust it, then write it with make_config)."""
    monkeypatch.setenv(KEY_ENV, "sk-test-secret")
    return {
        "targets": {"primary": {"dsn": memory_dsn}},
        "connection": {"retry": {"attempts": 1}},
        "embedding": {"provider": "openai", "base_url": embedding_server.base_url,
                      "model": "test-embed", "api_key_env": KEY_ENV, "batch_size": 16,
                      "timeout": "5s", "retries": 2, "max_retry_wait": "1s"},
    }


@pytest.fixture
def make_config(write_config: Callable[..., Path], memory_settings: dict[str, Any]
                ) -> Callable[..., Path]:
    def make(**sections: Any) -> Path:
        settings = json.loads(json.dumps(memory_settings))
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(settings.get(key), dict):
                settings[key].update(value)
            else:
                settings[key] = value
        return write_config(settings)

    return make


def jsonl(records: list[dict[str, Any]], with_embeddings: bool = False) -> str:
    """JSON lines for import; with_embeddings computes each vector like the test server."""
    lines = []
    for record in records:
        record = dict(record)
        if with_embeddings:
            text = record.get("summary") or record.get("content") or ""
            record["embedding"] = embed(text, DIM)
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def episodic(summary: str, **columns: Any) -> dict[str, Any]:
    return {"kind": "episodic", "event_type": columns.pop("event_type", "note"),
            "summary": summary, **columns}


def results(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]
