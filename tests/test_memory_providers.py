"""Embedding providers against a real HTTP server speaking the OpenAI embeddings protocol."""

from __future__ import annotations

import math
import socket

import pytest
from embedding_server import EmbeddingServer
from memory_fixtures import DIM

from aegisctl.config import EmbeddingSettings
from aegisctl.errors import ConfigError, ExitCode, OperationFailed, RemoteUnavailable
from aegisctl.memory.providers import embed_texts, make_provider


def _provider(server: EmbeddingServer, **overrides: object):
    settings = EmbeddingSettings(provider="openai", base_url=server.base_url, model="m",
                                 api_key_env="KEY", batch_size=3, timeout=5.0, retries=2,
                                 max_retry_wait=1.0)
    for key, value in overrides.items():
        setattr(settings, key, value)
    provider = make_provider(settings, DIM, env={"KEY": "sk-secret"})
    assert provider is not None
    return provider


def test_batches_and_sends_the_key(embedding_server: EmbeddingServer) -> None:
    provider = _provider(embedding_server)
    vectors = embed_texts(provider, [f"billing retry {i}" for i in range(7)])
    assert len(vectors) == 7 and all(len(v) == DIM for v in vectors)
    assert embedding_server.state.batch_sizes == [3, 3, 1]
    assert set(embedding_server.state.auth_headers) == {"Bearer sk-secret"}


def test_401_is_one_line_naming_the_variable(embedding_server: EmbeddingServer) -> None:
    embedding_server.state.fail_with = 401
    with pytest.raises(ConfigError) as caught:
        embed_texts(_provider(embedding_server), ["x"])
    message = str(caught.value)
    assert "HTTP 401" in message and "$KEY" in message and "\n" not in message
    assert "sk-secret" not in message
    assert embedding_server.state.requests == 1  # never retried


def test_429_then_success_honours_retry_after(embedding_server: EmbeddingServer) -> None:
    embedding_server.state.rate_limit_first = 2
    vectors = embed_texts(_provider(embedding_server), ["a", "b"])
    assert len(vectors) == 2
    assert embedding_server.state.requests == 3


def test_429_beyond_the_retries_fails(embedding_server: EmbeddingServer) -> None:
    embedding_server.state.rate_limit_first = 10
    with pytest.raises(OperationFailed, match="HTTP 429"):
        embed_texts(_provider(embedding_server, retries=1), ["a"])
    assert embedding_server.state.requests == 2


def test_unreachable_endpoint(embedding_server: EmbeddingServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = _provider(embedding_server, base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(RemoteUnavailable) as caught:
        embed_texts(provider, ["a"])
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_wrong_dimension_from_the_model(embedding_server: EmbeddingServer) -> None:
    embedding_server.state.extra_dims = 1
    with pytest.raises(ConfigError, match=f"returned {DIM + 1}-dimension vectors, expected {DIM}"):
        embed_texts(_provider(embedding_server), ["a"])


def test_configured_dimension_must_match_the_database() -> None:
    with pytest.raises(ConfigError, match="database stores 32-dimension"):
        make_provider(EmbeddingSettings(provider="openai", dimensions=64), 32, env={})


def test_dimensions_are_sent_only_when_configured(embedding_server: EmbeddingServer) -> None:
    provider = _provider(embedding_server, dimensions=DIM)
    assert len(embed_texts(provider, ["a"])[0]) == DIM


def test_none_provider() -> None:
    assert make_provider(EmbeddingSettings(provider="none"), 32) is None


def test_local_provider_is_offline_and_pads_without_changing_cosine() -> None:
    pytest.importorskip("wordllama")
    settings = EmbeddingSettings(provider="local")
    native = make_provider(settings, 256)
    padded = make_provider(settings, 300)
    assert native is not None and padded is not None
    texts = ["the billing retries failed", "payment charge was retried", "kubernetes pod"]
    a, b = embed_texts(native, texts), embed_texts(padded, texts)
    assert len(a[0]) == 256 and len(b[0]) == 300 and b[0][256:] == [0.0] * 44

    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True)) / math.sqrt(
            sum(p * p for p in x) * sum(q * q for q in y))

    assert cos(a[0], a[1]) == pytest.approx(cos(b[0], b[1]), abs=1e-6)
    assert cos(a[0], a[1]) > cos(a[0], a[2])
