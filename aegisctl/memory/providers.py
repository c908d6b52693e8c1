"""Embedding providers behind one small interface: `embed(texts) -> vectors`, in batches.

- `openai`: any OpenAI-compatible `POST {base_url}/embeddings` endpoint (OpenAI, Ollama, vLLM,
  LiteLLM, LM Studio...), over plain HTTP with the standard library.
- `local`: wordllama, a 256-dimension word-level model that ships inside its wheel (numpy
  only, no download at run time). Its vectors are L2-normalised; to fit a database with more
  dimensions they are zero-padded, which leaves every cosine similarity unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aegisctl.config import EmbeddingSettings
from aegisctl.errors import ConfigError, OperationFailed
from aegisctl.memory.http import Endpoint, post_json

log = logging.getLogger(__name__)

LOCAL_MODEL = "wordllama l2_supercat"
LOCAL_NATIVE_DIM = 256

Vector = list[float]


class EmbeddingProvider(Protocol):
    name: str
    model: str
    dimensions: int
    batch_size: int

    def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        """Vectors for at most `batch_size` texts, in order."""
        ...


def embed_texts(provider: EmbeddingProvider, texts: Sequence[str],
                progress: Callable[[int], None] | None = None) -> list[Vector]:
    """Vectors for any number of texts, `batch_size` at a time; `progress(n)` after each batch."""
    vectors: list[Vector] = []
    for start in range(0, len(texts), provider.batch_size):
        batch = texts[start:start + provider.batch_size]
        got = provider.embed_batch(batch)
        _check_vectors(provider, got, len(batch))
        vectors.extend(got)
        if progress:
            progress(len(batch))
    return vectors


def _check_vectors(provider: EmbeddingProvider, vectors: list[Vector], expected: int) -> None:
    if len(vectors) != expected:
        raise OperationFailed(
            f"embedding provider '{provider.name}' returned {len(vectors)} vectors for "
            f"{expected} texts"
        )
    for vector in vectors:
        if len(vector) != provider.dimensions:
            raise ConfigError(
                f"embedding model '{provider.model}' returned {len(vector)}-dimension vectors, "
                f"expected {provider.dimensions}",
                hint="set embedding.dimensions / embedding.model to match the database's "
                     "embedding dimension",
            )


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


@dataclass
class OpenAIProvider:
    base_url: str
    model: str
    dimensions: int
    batch_size: int
    api_key: str | None
    api_key_env: str | None
    send_dimensions: bool
    timeout: float
    retries: int
    max_retry_wait: float
    name: str = "openai"

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/embeddings"

    def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        body: dict[str, Any] = {"model": self.model, "input": list(texts),
                                "encoding_format": "float"}
        if self.send_dimensions:
            body["dimensions"] = self.dimensions
        payload = self._post(body)
        try:
            items = sorted(payload["data"], key=lambda item: item.get("index", 0))
            return [[float(x) for x in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise OperationFailed(
                f"embedding endpoint {self.url} answered with an unexpected body "
                f"({type(exc).__name__}: {exc})"
            ) from None

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        payload = post_json(Endpoint(
            url=self.url, what="embedding endpoint",
            unreachable_hint="check embedding.base_url, or set embedding.provider: none for "
                             "keyword search only",
            auth_error=self._auth_error, api_key=self.api_key, timeout=self.timeout,
            retries=self.retries, max_retry_wait=self.max_retry_wait), body)
        if not isinstance(payload, dict):
            raise OperationFailed(f"embedding endpoint {self.url} answered with an unexpected "
                                  "body (not a JSON object)")
        return payload

    def _auth_error(self, code: int, detail: str) -> ConfigError:
        if self.api_key:
            hint = f"check the key in ${self.api_key_env}" if self.api_key_env else "check the key"
        elif self.api_key_env:
            hint = f"${self.api_key_env} is not set"
        else:
            hint = "set embedding.api_key_env to the variable holding the API key"
        what = "refused the API key" if code == 401 else "denied access"
        return ConfigError(
            f"embedding endpoint {self.url} {what} (HTTP {code}"
            + (f": {detail}" if detail else "") + ")",
            hint=hint,
        )


# ---------------------------------------------------------------------------------------------
# Local: wordllama


@dataclass
class LocalProvider:
    dimensions: int
    batch_size: int
    model: str = LOCAL_MODEL
    name: str = "local"
    _model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            try:
                import wordllama  # type: ignore[import-untyped]
                from wordllama import WordLlama
            except ImportError:
                raise ConfigError(
                    "embedding.provider is 'local' but wordllama is not installed",
                    hint="pip install 'aegisctl[local]'",
                ) from None
            from pathlib import Path

            folder = Path(wordllama.__file__).parent
            trunc = self.dimensions if self.dimensions < LOCAL_NATIVE_DIM else None
            self._model = WordLlama.load(cache_dir=folder, disable_download=True,
                                         trunc_dim=trunc)
        return self._model

    def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        import numpy as np

        vectors = np.asarray(self._load().embed(list(texts), norm=True), dtype=np.float32)
        vectors = np.nan_to_num(vectors)
        if vectors.shape[1] < self.dimensions:
            pad = np.zeros((vectors.shape[0], self.dimensions - vectors.shape[1]), np.float32)
            vectors = np.hstack([vectors, pad])
        result: list[Vector] = vectors.tolist()
        return result


def local_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("wordllama") is not None


# ---------------------------------------------------------------------------------------------
# Choosing


def provider_name(settings: EmbeddingSettings) -> str:
    """The effective provider: an unset provider means local if wordllama is installed."""
    if settings.provider is None:
        return "local" if local_available() else "none"
    return settings.provider


def make_provider(settings: EmbeddingSettings, database_dim: int | None,
                  env: dict[str, str] | None = None) -> EmbeddingProvider | None:
    """The configured provider, sized for the database; None when embeddings are off.

    A configured `embedding.dimensions` that differs from the database's is refused here,
    before any text is sent anywhere.
    """
    import os

    name = provider_name(settings)
    if name == "none":
        return None
    if settings.dimensions and database_dim and settings.dimensions != database_dim:
        raise ConfigError(
            f"embedding.dimensions is {settings.dimensions} but the database stores "
            f"{database_dim}-dimension embeddings",
            hint="use a model with the database's dimension, or initialise a new database "
                 f"with schema.embedding_dim: {settings.dimensions}",
        )
    if name == "local":
        dim = settings.dimensions or database_dim or LOCAL_NATIVE_DIM
        return LocalProvider(dimensions=dim, batch_size=max(settings.batch_size, 256))
    env = dict(os.environ) if env is None else env
    api_key = env.get(settings.api_key_env) if settings.api_key_env else None
    dim = settings.dimensions or database_dim or 1536
    return OpenAIProvider(
        base_url=settings.base_url, model=settings.model, dimensions=dim,
        batch_size=settings.batch_size, api_key=api_key or None,
        api_key_env=settings.api_key_env, send_dimensions=settings.dimensions is not None,
        timeout=settings.timeout, retries=settings.retries,
        max_retry_wait=settings.max_retry_wait,
    )

