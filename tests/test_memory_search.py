"""memory search / similar / show / recent / stats on a real database and embedding server."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import psycopg
from embedding_server import CONCEPTS, EmbeddingServer
from memory_fixtures import episodic, jsonl, results

NOW = dt.datetime.now(dt.UTC)


def _ago(days: float) -> str:
    return (NOW - dt.timedelta(days=days)).isoformat()


def _import(cli: Any, config: Path, tmp_path: Path, records: list[dict[str, Any]],
            with_embeddings: bool = True) -> None:
    path = tmp_path / "load.jsonl"
    path.write_text(jsonl(records, with_embeddings))
    result = cli("--config", str(config), "memory", "import", str(path), "-f", "json")
    assert result.exit_code == 0, result.output


FILTER_SET = [
    episodic("Decided to cap billing retries at three", event_type="decision",
             importance="high", tags=["billing", "stripe"], timestamp=_ago(2)),
    episodic("Decided billing invoices go out monthly", event_type="decision",
             importance="medium", tags=["billing"], timestamp=_ago(3)),
    episodic("Decided on a billing refund policy long ago", event_type="decision",
             importance="critical", tags=["billing"], timestamp=_ago(40)),
    episodic("Billing charge failed with a card error", event_type="error",
             importance="high", tags=["billing"], timestamp=_ago(1)),
    episodic("Decided to retry deploys of the billing pod", event_type="decision",
             importance="high", tags=["deploy"], timestamp=_ago(1.5)),
    {"kind": "semantic", "concept": "Retry policy", "content": "Billing retries happen three "
     "times with backoff", "category": "billing", "tags": ["billing"]},
]


def test_filters_combine(cli, make_config, tmp_path) -> None:
    config = make_config()
    _import(cli, config, tmp_path, FILTER_SET)
    for mode in ("semantic", "keyword", "hybrid"):
        result = cli("--config", str(config), "memory", "search", "billing retries decision",
                     "--mode", mode, "--type", "decision", "--tag", "billing",
                     "--min-importance", "high", "--since", "10d")
        assert result.exit_code == 0, result.output
        found = results(result.stdout)
        assert [r["summary"] for r in found] == ["Decided to cap billing retries at three"], mode
    # --category narrows to semantic memory; --kind episodic excludes it.
    found = results(cli("--config", str(config), "memory", "search", "billing",
                        "--category", "billing").stdout)
    assert [r["id"] for r in found] == ["semantic:1"]
    found = results(cli("--config", str(config), "memory", "search", "billing", "--kind",
                        "episodic", "--until", "30d").stdout)
    assert [r["summary"] for r in found] == ["Decided on a billing refund policy long ago"]
    clash = cli("--config", str(config), "memory", "search", "x", "--type", "decision",
                "--category", "billing")
    assert clash.exit_code == 2 and "no memory can match both" in clash.stderr


def _corpus(rows: int, rare_every: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    words = [w for group in CONCEPTS.values() for w in group]
    records = []
    for i in range(rows):
        text = " ".join(rng.sample(words, 5)) + f" event {i}"
        tags = ["rare"] if i % rare_every == 0 else ["common"]
        records.append(episodic(text, tags=tags, timestamp=_ago(i / 10)))
    return records


def test_selective_filter_still_returns_limit_rows_through_the_index(
        cli, make_config, tmp_path, memory_db: psycopg.Connection[Any]) -> None:
    # Never exact, and the smallest candidate list: without iterative scans the HNSW scan
    # would hand back ~5 candidates of which ~1 in 25 carries the tag.
    config = make_config(search={"exact_below": 0, "ef_search": 5})
    _import(cli, config, tmp_path, _corpus(500, 25))
    # On 500 rows the planner would rather scan the table; make it take the index, as it does
    # on a real-sized table, so the iterative scan is what gets tested.
    memory_db.execute(f"ALTER DATABASE {memory_db.info.dbname} SET enable_seqscan = off")
    memory_db.execute(f"ALTER DATABASE {memory_db.info.dbname} SET enable_bitmapscan = off")
    memory_db.commit()
    result = cli("--config", str(config), "memory", "search", "database index query",
                 "--mode", "semantic", "--tag", "rare", "--limit", "5", "--explain",
                 "-f", "json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert len(body["results"]) == 5
    assert all(r["tags"] == ["rare"] for r in body["results"])
    path = body["explain"]["paths"][0]
    assert "hnsw index" in path["path"] and "iterative scan (strict_order)" in path["path"]
    assert any("idx_episodic_embedding" in line for line in path["plan"])
    # The same five as an exact search.
    exact_config = make_config(search={"exact_below": 100000})
    exact = json.loads(cli("--config", str(exact_config), "memory", "search",
                           "database index query", "--mode", "semantic", "--tag", "rare",
                           "--limit", "5", "--explain", "-f", "json").stdout)
    assert exact["explain"]["paths"][0]["path"].startswith("exact")
    assert [r["id"] for r in exact["results"]] == [r["id"] for r in body["results"]]


HYBRID_SET = [
    # The paraphrase: no word in common with the query, same concepts (money + retry).
    episodic("Decided failed billing charges get three more attempts with backoff"),
    # The exact keyword: a rare identifier the vectors barely see.
    episodic("Rotated the service account zx81kappa after the audit"),
    # Distractors that share the query's concepts, so the vectors rank them above zx81kappa.
    episodic("Customer invoice emailed after the subscription price change"),
    episodic("Repeat the nightly job again when it fails"),
    episodic("Stripe card refund processed for the customer"),
    episodic("Rerun the flaky suite again"),
    episodic("Payment page shows the price"),
]


def test_hybrid_finds_what_each_signal_alone_misses(cli, make_config, tmp_path) -> None:
    config = make_config()
    _import(cli, config, tmp_path, HYBRID_SET, with_embeddings=False)
    query = "how do we reattempt payments for zx81kappa"

    def search(mode: str) -> list[str]:
        result = cli("--config", str(config), "memory", "search", query, "--mode", mode,
                     "--limit", "3")
        assert result.exit_code == 0, result.output
        return [r["summary"] for r in results(result.stdout)]

    paraphrase, keyword = HYBRID_SET[0]["summary"], HYBRID_SET[1]["summary"]
    semantic, lexical, hybrid = search("semantic"), search("keyword"), search("hybrid")
    assert paraphrase in semantic and keyword not in semantic
    assert keyword in lexical and paraphrase not in lexical
    assert paraphrase in hybrid and keyword in hybrid
    body = json.loads(cli("--config", str(config), "memory", "search", query, "--limit", "3",
                          "-f", "json").stdout)
    assert body["mode"] == "hybrid"
    ranks = {r["summary"]: r["ranks"] for r in body["results"]}
    assert set(ranks[keyword]) == {"semantic", "keyword"} or ranks[keyword]["keyword"] == 1
    assert "semantic" in ranks[paraphrase]
    assert all(r["score"] > 0 and r["similarity"] is not None for r in body["results"])


def test_threshold(cli, make_config, tmp_path) -> None:
    config = make_config()
    _import(cli, config, tmp_path, HYBRID_SET)
    base = ("--config", str(config), "memory", "search", "billing retry", "--mode", "semantic")
    everything = results(cli(*base).stdout)
    strict = results(cli(*base, "--threshold", "0.6").stdout)
    assert len(everything) == len(HYBRID_SET)
    assert 0 < len(strict) < len(everything)
    assert all(r["similarity"] >= 0.6 for r in strict)
    assert {r["id"] for r in strict} == {r["id"] for r in everything if r["similarity"] >= 0.6}
    wrong = cli("--config", str(config), "memory", "search", "x", "--mode", "keyword",
                "--threshold", "0.5")
    assert wrong.exit_code == 2


def test_keyword_trigram_fallback_for_misspellings(cli, make_config, tmp_path) -> None:
    config = make_config(embedding={"provider": "none"})
    _import(cli, config, tmp_path, HYBRID_SET, with_embeddings=False)
    body = json.loads(cli("--config", str(config), "memory", "search", "zx81kapa",
                          "-f", "json").stdout)
    assert body["mode"] == "keyword"  # no provider: keyword by default
    assert body["results"][0]["summary"] == HYBRID_SET[1]["summary"]
    assert body["results"][0]["match"] == "trigram"


def test_decay_prefers_recent_important(cli, make_config, tmp_path) -> None:
    config = make_config()
    _import(cli, config, tmp_path, [
        episodic("billing retries decided", importance="low", timestamp=_ago(60)),
        episodic("billing decided", importance="critical", timestamp=_ago(1)),
    ])
    base = ("--config", str(config), "memory", "search", "billing retries decided",
            "--mode", "keyword")
    assert results(cli(*base).stdout)[0]["importance"] == "low"
    decayed = results(cli(*base, "--decay", "7d").stdout)
    assert decayed[0]["importance"] == "critical"
    assert 0 < decayed[0]["decay"] <= 1


def test_provider_errors_are_one_line(cli, make_config, tmp_path,
                                      embedding_server: EmbeddingServer) -> None:
    config = make_config()
    _import(cli, config, tmp_path, HYBRID_SET)
    embedding_server.state.fail_with = 401
    result = cli("--config", str(config), "memory", "search", "billing")
    assert result.exit_code == 2
    assert "HTTP 401" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    embedding_server.state.fail_with = None
    embedding_server.state.extra_dims = 3
    result = cli("--config", str(config), "memory", "search", "billing")
    assert result.exit_code == 2 and "35-dimension" in result.stderr
    embedding_server.state.extra_dims = 0
    embedding_server.state.rate_limit_first = embedding_server.state.requests + 1
    assert cli("--config", str(config), "memory", "search", "billing").exit_code == 0
    down = make_config(embedding={"base_url": "http://127.0.0.1:9/v1"})
    result = cli("--config", str(down), "memory", "search", "billing")
    assert result.exit_code == 3 and "cannot reach the embedding endpoint" in result.stderr
    # Keyword search needs no provider at all.
    assert cli("--config", str(down), "memory", "search", "billing", "--mode",
               "keyword").exit_code == 0
    mismatch = make_config(embedding={"dimensions": 64})
    result = cli("--config", str(mismatch), "memory", "search", "billing")
    assert result.exit_code == 2 and "database stores 32-dimension" in result.stderr


def test_similar_show_recent_stats(cli, make_config, tmp_path) -> None:
    config = make_config()
    _import(cli, config, tmp_path, FILTER_SET)
    c = ("--config", str(config), "memory")
    near = results(cli(*c, "similar", "episodic:1", "--limit", "3").stdout)
    assert len(near) == 3 and "episodic:1" not in [r["id"] for r in near]
    assert near[0]["similarity"] >= near[-1]["similarity"]
    shown = json.loads(cli(*c, "show", "e:1", "-f", "json", "--embedding").stdout)
    assert shown["summary"] == FILTER_SET[0]["summary"] and len(shown["embedding"]) == 32
    assert cli(*c, "show", "episodic:999").exit_code == 1
    assert cli(*c, "show", "42").exit_code == 2
    recent = results(cli(*c, "recent", "--limit", "2", "--kind", "episodic").stdout)
    assert [r["summary"] for r in recent] == [FILTER_SET[3]["summary"],
                                              FILTER_SET[4]["summary"]]
    stats = json.loads(cli(*c, "stats", "-f", "json").stdout)
    assert stats["embedding_dim"] == 32
    assert stats["kinds"]["episodic"]["count"] == 5
    assert stats["kinds"]["episodic"]["by_event_type"] == {"decision": 4, "error": 1}
    assert stats["kinds"]["semantic"]["without_embedding"] == 0
    table = cli(*c, "search", "billing", "-f", "table")
    assert table.exit_code == 0 and "episodic:1" in table.stdout

