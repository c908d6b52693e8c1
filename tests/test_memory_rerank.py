"""The optional rerank step (search.rerank) against the tests' real HTTP server, which serves
`POST /rerank` as the open-source rerank servers do; and hybrid's query-adaptive weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memory_fixtures import jsonl
from test_memory_fusion import MEMORIES

from aegisctl.config import SearchSettings
from aegisctl.memory.search import Hit, TermStats, adaptive_weights, fuse

QUERY = "how do we retry a billing charge that did not go through"


def _load(cli: Any, config: Path, tmp_path: Path) -> None:
    path = tmp_path / "load.jsonl"
    path.write_text(jsonl(MEMORIES))
    result = cli("--config", str(config), "memory", "import", str(path), "-f", "json")
    assert result.exit_code == 0, result.output


def _search(cli: Any, config: Path, *args: str) -> Any:
    return cli("--config", str(config), "memory", "search", *args, "-f", "json")


def test_rerank_reorders_the_fused_top_n(cli, make_config, embedding_server, tmp_path) -> None:
    rerank = {"base_url": embedding_server.base_url, "model": "test-rerank", "top_n": 4}
    config = make_config(search={"rerank": rerank})
    _load(cli, config, tmp_path)
    result = _search(cli, config, QUERY, "--limit", "6", "--explain")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    head, tail = body["results"][:4], body["results"][4:]
    scores = [r["rerank_score"] for r in head]
    assert scores == sorted(scores, reverse=True)  # the top 4 in the model's order
    assert [r["ranks"]["rerank"] for r in head] == [1, 2, 3, 4]
    assert all("rerank_score" not in r for r in tail)  # the rest keep their fused order
    assert embedding_server.state.rerank_requests == 1
    assert embedding_server.state.rerank_documents == [4]
    assert body["explain"]["rerank_ms"] > 0 and body["explain"]["fusion"]["reason"]

    for extra in (("--no-rerank",), ("--mode", "semantic"), ("--mode", "keyword")):
        result = _search(cli, config, QUERY, *extra)
        assert result.exit_code == 0, result.output
        assert all("rerank_score" not in r for r in json.loads(result.stdout)["results"])
    assert embedding_server.state.rerank_requests == 1  # only hybrid calls the model


def test_without_a_reranker_nothing_changes(cli, make_config, embedding_server,
                                            tmp_path) -> None:
    config = make_config()
    _load(cli, config, tmp_path)
    result = _search(cli, config, QUERY)
    assert result.exit_code == 0, result.output
    assert all("rerank_score" not in r for r in json.loads(result.stdout)["results"])
    assert embedding_server.state.rerank_requests == 0


def test_a_failing_reranker_is_a_clear_error(cli, make_config, embedding_server,
                                              tmp_path) -> None:
    config = make_config(search={"rerank": {"base_url": embedding_server.base_url,
                                            "model": "m", "retries": 0}})
    _load(cli, config, tmp_path)
    embedding_server.state.rerank_fail_with = 500
    result = _search(cli, config, QUERY)
    assert result.exit_code == 1 and "rerank endpoint" in result.stderr
    assert "HTTP 500" in result.stderr and "Traceback" not in result.stderr
    embedding_server.state.rerank_fail_with = None
    embedding_server.state.rerank_bad_body = True
    result = _search(cli, config, QUERY)
    assert result.exit_code == 1 and "without a results list" in result.stderr
    down = make_config(search={"rerank": {"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                          "retries": 0, "timeout": "2s"}})
    result = _search(cli, down, QUERY)
    assert result.exit_code == 3 and "cannot reach the rerank endpoint" in result.stderr
    bad = make_config(search={"rerank": {"base_url": "ftp://host", "model": "m"}})
    result = _search(cli, bad, QUERY)
    assert result.exit_code == 2 and "search.rerank.base_url" in result.stderr


def _hit(n: int, similarity: float, share: float | None = None, **ranks: int) -> Hit:
    return Hit(kind="semantic", id=n, record={"id": f"semantic:{n}", "kind": "semantic",
                                              "concept": "c", "content": f"text {n}"},
               similarity=similarity, term_share=share, ranks=dict(ranks))


def test_adaptive_weights_lean_on_the_strong_signal() -> None:
    settings = SearchSettings()
    semantic = [_hit(n, 0.8 - 0.03 * n, semantic=n) for n in range(1, 11)]  # spread 0.27
    flat = [_hit(n, 0.50 - 0.001 * n, semantic=n) for n in range(1, 11)]  # spread 0.009
    selective = TermStats(idf={"vacuum_freeze_min_age": 7.0}, documents=3000)
    common = TermStats(idf={"table": 0.7, "row": 0.8}, documents=3000)
    # The query names a rare identifier and a keyword hit holds all of it; the vectors are flat.
    strong_keyword = [_hit(20, 0.4, 1.0, keyword=1), _hit(21, 0.4, 0.5, keyword=2)]
    weights = adaptive_weights(flat, strong_keyword, selective, settings)
    assert weights.keyword > weights.semantic and weights.reason == "semantic signal weak"
    # Common words only, the best keyword hit holds a third of them: semantic leads.
    weak_keyword = [_hit(30, 0.4, 0.33, keyword=1)]
    weights = adaptive_weights(semantic, weak_keyword, common, settings)
    assert weights.semantic > weights.keyword and weights.reason == "keyword signal weak"
    assert adaptive_weights(semantic, [], common, settings).keyword_strength == 0.0
    fixed = adaptive_weights(semantic, weak_keyword, common, SearchSettings(adaptive=False))
    assert (fixed.semantic, fixed.keyword) == (1.0, 0.75)
    # Agreement: a memory both signals rank in their top 10 gets half a first-place vote more.
    both = [_hit(1, 0.9, semantic=3), _hit(2, 0.8, semantic=1)]
    kw = [_hit(1, 0.9, 1.0, keyword=3)]
    plain = {h.id: h.score for h in fuse([*both], [*kw], "hybrid", settings,
                                         weights=weights)}
    assert plain[1] > weights.semantic / (settings.rrf_k + 3) + \
        weights.keyword / (settings.rrf_k + 3)


def test_rerank_and_embedding_share_the_http_retries(embedding_server) -> None:
    """One HTTP helper (aegisctl.memory.http) posts for both: 5xx retried, then one line with
    the server's own message; a refused key never retried, with the rerank step's own hint."""
    import pytest

    from aegisctl.config import RerankSettings
    from aegisctl.errors import ConfigError, OperationFailed
    from aegisctl.memory.search.rerank import make_reranker

    reranker = make_reranker(RerankSettings(base_url=embedding_server.base_url, model="m",
                                            retries=1))
    assert reranker is not None
    embedding_server.state.rerank_fail_with = 503
    with pytest.raises(OperationFailed) as failed:
        reranker.scores("q", ["a", "b"])
    assert str(failed.value) == (f"rerank endpoint {reranker.url} answered HTTP 503: "
                                 "model unavailable")
    assert embedding_server.state.rerank_requests == 2  # retried once
    embedding_server.state.rerank_fail_with = 401
    with pytest.raises(ConfigError) as refused:
        reranker.scores("q", ["a", "b"])
    assert embedding_server.state.rerank_requests == 3  # never retried
    assert "HTTP 401" in str(refused.value) and "search.rerank.api_key_env" in str(
        refused.value.hint)
