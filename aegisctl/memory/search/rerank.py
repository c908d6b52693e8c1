"""The optional rerank step: a cross-encoder scores (query, memory text) pairs for the fused top
N over the rerank protocol the common open-source servers speak (Infinity, llama.cpp's server,
Jina- and Cohere-compatible endpoints; Hugging Face TEI's answer shape is accepted too):

    POST {base_url}/rerank  {"model", "query", "documents": [...], "top_n", "return_documents"}
    -> {"results": [{"index": i, "relevance_score": s}, ...]}   (or a bare list of
       {"index", "score"} as TEI answers)

The hits past top N keep their fused order after the reranked ones. A reranker that cannot be
reached or answers badly fails the search with a clear error (a ranking silently without the
step the user configured would mislead more than an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from aegisctl.config import RerankSettings
from aegisctl.errors import ConfigError, OperationFailed
from aegisctl.memory.http import Endpoint, post_json
from aegisctl.memory.search.fusion import searchable
from aegisctl.memory.search.hits import Hit

# A search waits for the reranker: a retry waits at most this long, whatever Retry-After says.
MAX_RETRY_WAIT = 2.0
# A document longer than this is cut before it is sent: rerank models read ~512 tokens.
MAX_DOCUMENT_CHARS = 4000


@dataclass
class Reranker:
    base_url: str
    model: str
    top_n: int
    api_key: str | None = None
    timeout: float = 10.0
    retries: int = 1

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/rerank"

    def scores(self, query: str, documents: list[str]) -> list[float]:
        """One score per document, in the documents' order (higher = more relevant)."""
        body = {"model": self.model, "query": query,
                "documents": [d[:MAX_DOCUMENT_CHARS] for d in documents],
                "top_n": len(documents), "return_documents": False}
        payload = self._post(body)
        items = payload.get("results") if isinstance(payload, dict) else payload
        if not isinstance(items, list):
            raise OperationFailed(f"rerank endpoint {self.url} answered without a results list")
        out: list[float | None] = [None] * len(documents)
        for item in items:
            try:
                index = int(item["index"])
                score = float(item.get("relevance_score", item.get("score")))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise OperationFailed(f"rerank endpoint {self.url} answered an item without "
                                      "index and relevance_score") from None
            if not 0 <= index < len(documents) or score != score:  # NaN != NaN
                raise OperationFailed(f"rerank endpoint {self.url} answered index {index} "
                                      f"for {len(documents)} documents")
            out[index] = score
        if any(s is None for s in out):
            raise OperationFailed(f"rerank endpoint {self.url} scored {sum(s is not None for s in out)}"
                                  f" of {len(documents)} documents")
        return [float(s) for s in out if s is not None]

    def _post(self, body: dict[str, Any]) -> Any:
        return post_json(Endpoint(
            url=self.url, what="rerank endpoint",
            unreachable_hint="check search.rerank.base_url, or remove search.rerank",
            auth_error=self._auth_error, api_key=self.api_key, timeout=self.timeout,
            retries=self.retries, max_retry_wait=MAX_RETRY_WAIT), body)

    def _auth_error(self, code: int, detail: str) -> ConfigError:
        return ConfigError(f"rerank endpoint {self.url} refused the request (HTTP {code}"
                           + (f": {detail}" if detail else "") + ")",
                           hint="set search.rerank.api_key_env to the variable holding its key")


def make_reranker(settings: RerankSettings | None,
                  env: dict[str, str] | None = None) -> Reranker | None:
    if settings is None:
        return None
    env = dict(os.environ) if env is None else env
    key = env.get(settings.api_key_env) if settings.api_key_env else None
    return Reranker(base_url=settings.base_url, model=settings.model, top_n=settings.top_n,
                    api_key=key or None, timeout=settings.timeout, retries=settings.retries)


def rerank(reranker: Reranker, query: str, hits: list[Hit]) -> list[Hit]:
    """The first top_n hits reordered by the model's scores; the rest after them, as fused."""
    head, tail = hits[:reranker.top_n], hits[reranker.top_n:]
    if len(head) < 2:
        return hits
    scores = reranker.scores(query, [searchable(h) for h in head])
    for hit, score in zip(head, scores, strict=True):
        hit.rerank_score = score
    order = sorted(range(len(head)), key=lambda i: (-scores[i], i))
    ranked = [head[i] for i in order]
    for rank, hit in enumerate(ranked, start=1):
        hit.ranks["rerank"] = rank
    return ranked + tail
