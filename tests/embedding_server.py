"""A real HTTP server speaking the OpenAI embeddings protocol, for the memory tests.

Its "model" is deterministic and word-level, like a tiny real one: each word it knows belongs to
a concept (billing, charge, payment and invoice are all `money`), and a text's vector is the sum
of its concepts' fixed random directions. Words it does not know (identifiers such as
`zx81kappa`) contribute only a faint hashed direction, the way real embedding models blur rare
tokens. So paraphrases land close together even without a shared word, while an exact rare
keyword is easy for full-text search and nearly invisible to the vectors.

Switches (attributes of `EmbeddingServer.state`): `fail_with=401`, `rate_limit_first=N` (the
first N requests get 429 with Retry-After: 0), `extra_dims=1` (wrong dimension),
`fail_after_requests=N` (500 for every request after N, to interrupt a long job),
`delay=0.05` (seconds added to every request, like a model's latency).

It also serves `POST /rerank` as the open-source rerank servers do ({"model", "query",
"documents", "top_n"} -> {"results": [{"index", "relevance_score"}]}, best first): the score is
the cosine of the two texts' concept vectors, so it prefers memories about the query's concepts
over ones that merely share a rare word. `rerank_fail_with=500` fails those requests,
`rerank_bad_body=True` answers without results; `rerank_requests` counts them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

CONCEPTS: dict[str, list[str]] = {
    "money": ["billing", "bill", "charge", "payment", "pay", "invoice", "stripe", "card",
              "refund", "subscription", "price", "customer"],
    "retry": ["retry", "reattempt", "again", "backoff", "repeat", "retries", "rerun"],
    "failure": ["fail", "failed", "failure", "error", "crash", "broke", "broken", "outage",
                "incident", "timeout", "exception"],
    "database": ["database", "postgres", "postgresql", "sql", "query", "index", "table",
                 "vacuum", "replica", "db"],
    "deploy": ["deploy", "deployment", "release", "rollout", "ship", "kubernetes", "pod",
               "container", "helm"],
    "decision": ["decide", "decided", "decision", "chose", "choose", "agreed", "policy",
                 "plan"],
    "security": ["credential", "secret", "key", "token", "password", "rotate", "rotated",
                 "auth", "certificate"],
    "docs": ["readme", "documentation", "docs", "guide", "wrote", "write"],
    "test": ["test", "tests", "pytest", "flaky", "ci", "suite"],
    "memory": ["memory", "remember", "recall", "embedding", "vector", "search"],
}
WORD_CONCEPT = {word: concept for concept, words in CONCEPTS.items() for word in words}
UNKNOWN_WEIGHT = 0.08


def _direction(name: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim)
    return vector / np.linalg.norm(vector)


def embed(text: str, dim: int, concepts: bool = True) -> list[float]:
    vector = 0.05 * _direction("__bias__", dim)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        concept = (WORD_CONCEPT.get(word) or WORD_CONCEPT.get(word.rstrip("s"))) \
            if concepts else None
        if concept:
            vector = vector + _direction(concept, dim)
        else:
            vector = vector + UNKNOWN_WEIGHT * _direction("w:" + word, dim)
    vector = vector / np.linalg.norm(vector)
    return [float(x) for x in vector]


def rerank_score(query: str, document: str) -> float:
    return float(np.dot(embed(query, 64), embed(document, 64)))


@dataclass
class ServerState:
    dim: int = 32
    fail_with: int | None = None
    rate_limit_first: int = 0
    extra_dims: int = 0
    fail_after_requests: int | None = None
    delay: float = 0.0
    concepts: bool = True  # False: a worse "model" that knows no concept (every word unknown)
    rerank_fail_with: int | None = None
    rerank_bad_body: bool = False
    rerank_requests: int = 0
    rerank_documents: list[int] = field(default_factory=list)
    requests: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _rerank(self, body: dict[str, Any]) -> None:
        state = self.state
        with state.lock:
            state.rerank_requests += 1
            state.rerank_documents.append(len(body["documents"]))
        if state.rerank_fail_with:
            self._send(state.rerank_fail_with, {"error": "model unavailable"})
            return
        if state.rerank_bad_body:
            self._send(200, {"unexpected": True})
            return
        scored = [{"index": i, "relevance_score": rerank_score(body["query"], doc)}
                  for i, doc in enumerate(body["documents"])]
        scored.sort(key=lambda item: -float(item["relevance_score"]))
        self._send(200, {"model": body.get("model"), "results": scored[:body.get("top_n")]})

    def do_POST(self) -> None:
        state = self.state
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        with state.lock:
            state.requests += 1
            number = state.requests
            state.auth_headers.append(self.headers.get("Authorization"))
        if self.path.endswith("/rerank"):
            self._rerank(body)
            return
        if not self.path.endswith("/embeddings"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if state.fail_with:
            self._send(state.fail_with, {"error": {"message": "Incorrect API key provided"}})
            return
        if number <= state.rate_limit_first:
            self._send(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "0"})
            return
        if state.fail_after_requests is not None and number > state.fail_after_requests:
            self._send(500, {"error": {"message": "model crashed"}})
            return
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if state.delay:
            time.sleep(state.delay)
        state.batch_sizes.append(len(texts))
        dim = int(body.get("dimensions") or state.dim) + state.extra_dims
        data = [{"object": "embedding", "index": i, "embedding": embed(t, dim, state.concepts)}
                for i, t in enumerate(texts)]
        self._send(200, {"object": "list", "data": data, "model": body.get("model"),
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})


class EmbeddingServer:
    def __init__(self, dim: int = 32) -> None:
        self.state = ServerState(dim=dim)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> EmbeddingServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
