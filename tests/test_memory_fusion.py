"""Hybrid fusion, exact-term boosting, dedupe, --min-score and highlights, pinned on small
labelled data served by the real HTTP embedding server of the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memory_fixtures import episodic, jsonl

from aegisctl.config import SearchSettings
from aegisctl.memory.search import Hit, dedupe, exact_terms, fuse

# A small labelled set. The test model knows concepts (money, retry, failure, database...) and
# blurs unknown words, like a real model blurs rare identifiers.
MEMORIES = [
    episodic("Failed card payments are charged again three times with backoff",
             event_type="learning"),                                             # 0 paraphrase
    episodic("Set statement_timeout_ms to 5000 on the reporting role",
             event_type="decision"),                                             # 1 identifier
    episodic("Error E4031_LOCKWAIT means another vacuum holds the table", event_type="error"),
    episodic("Credential rotation: the deploy token is rotated every month",
             event_type="task_complete"),                                        # 3 paraphrase
    episodic("Rerun the flaky suite again when the test fails", event_type="observation"),
    episodic("Invoice emailed to the customer after the price change", event_type="interaction"),
    episodic("Database index bloat grew after the bulk import", event_type="observation"),
    episodic("The refund for the subscription was processed", event_type="interaction"),
    episodic("Query on the replica timed out during the backup", event_type="error"),
]
QUESTIONS = [  # (question, index of the answer)
    ("how do we retry a billing charge that did not go through", 0),
    ("how often is the secret key changed", 3),
    ("statement_timeout_ms", 1),
    ("what is E4031_LOCKWAIT", 2),
    ("statement_timeout_ms reporting database", 1),
    ("E4031_LOCKWAIT table error", 2),
]


def _load(cli: Any, config: Path, tmp_path: Path, records: list[dict[str, Any]]) -> None:
    path = tmp_path / "load.jsonl"
    path.write_text(jsonl(records))
    result = cli("--config", str(config), "memory", "import", str(path), "-f", "json")
    assert result.exit_code == 0, result.output


def _search(cli: Any, config: Path, query: str, *extra: str) -> dict[str, Any]:
    result = cli("--config", str(config), "memory", "search", query, "-f", "json", *extra)
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_hybrid_beats_each_signal_on_a_labelled_set(cli, make_config, tmp_path) -> None:
    config = make_config()
    _load(cli, config, tmp_path, MEMORIES)

    def mrr(mode: str) -> float:
        total = 0.0
        for question, answer in QUESTIONS:
            found = [r["summary"] for r in _search(cli, config, question, "--mode", mode,
                                                   "--limit", "5")["results"]]
            if MEMORIES[answer]["summary"] in found:
                total += 1 / (found.index(MEMORIES[answer]["summary"]) + 1)
        return total / len(QUESTIONS)

    semantic, keyword, hybrid = mrr("semantic"), mrr("keyword"), mrr("hybrid")
    assert hybrid >= max(semantic, keyword)
    assert hybrid >= 0.9, (semantic, keyword, hybrid)
    assert semantic < 1.0 and keyword < 1.0  # each signal alone misses something


def test_exact_term_boost_puts_the_identifier_first(cli, make_config, tmp_path) -> None:
    config = make_config()
    _load(cli, config, tmp_path, MEMORIES)
    query = "E4031_LOCKWAIT table error"
    body = _search(cli, config, query, "--limit", "3")
    top = body["results"][0]
    assert top["summary"] == MEMORIES[2]["summary"]
    assert top["exact_terms"] == ["e4031_lockwait"]
    plain = make_config(search={"exact_term_boost": 0})
    unboosted = _search(cli, plain, query, "--limit", "3")["results"]
    assert unboosted[0]["exact_terms"] == [] or unboosted[0]["score"] < top["score"]


def test_weighted_rrf_and_identifier_detection() -> None:
    def hit(n: int, **ranks: int) -> Hit:
        return Hit(kind="semantic", id=n, record={"id": f"semantic:{n}", "kind": "semantic",
                                                  "concept": "c", "content": f"text {n}"},
                   ranks=dict(ranks))

    settings = SearchSettings(rrf_k=10, semantic_weight=1.0, keyword_weight=0.5,
                              exact_term_boost=0.0)
    semantic = [hit(1, semantic=1), hit(2, semantic=2)]
    keyword = [hit(2, keyword=1), hit(3, keyword=2)]
    fused = fuse(semantic, keyword, "hybrid", settings)
    scores = {h.id: round(h.score, 6) for h in fused}
    assert scores == {1: round(1 / 11, 6), 2: round(1 / 12 + 0.5 / 11, 6),
                      3: round(0.5 / 12, 6)}
    assert [h.id for h in fused] == [2, 1, 3]
    assert exact_terms("what does SQLITE_BUSY mean in sqlite3_open_v2() and .import?") == [
        "sqlite_busy", "sqlite3_open_v2", ".import"]
    assert exact_terms("how do I make writes faster") == []
    assert exact_terms("WAL mode vs x86_64") == ["wal", "x86_64"]


def test_near_identical_hits_are_folded(cli, make_config, tmp_path) -> None:
    config = make_config()
    text = ("The nightly backup of the billing database failed because the disk was full "
            "and the retention job had not run")
    _load(cli, config, tmp_path, [episodic(text), episodic(text + "."),
                                  episodic(text.replace("nightly", "nighly")),
                                  episodic("Billing database backup finished in four minutes")])
    body = _search(cli, config, "billing database backup failed", "--limit", "5")
    summaries = [r["summary"] for r in body["results"]]
    assert sum(1 for s in summaries if s.startswith(text[:20]) or "nighly" in s) == 1
    assert len(body["results"][0]["duplicates"]) == 2
    everything = _search(cli, make_config(search={"dedupe": 0}),
                         "billing database backup failed", "--limit", "5")
    assert len(everything["results"]) == 4
    hits = [Hit(kind="episodic", id=n, record={"summary": s, "id": f"episodic:{n}"})
            for n, s in enumerate([text, "something else entirely here", text + "!"])]
    assert [h.id for h in dedupe(hits, 0.8)] == [0, 1]


def test_min_score_means_the_same_in_every_mode(cli, make_config, tmp_path) -> None:
    config = make_config()
    _load(cli, config, tmp_path, MEMORIES)
    query = "billing charge retry"
    relevance: dict[str, dict[str, float]] = {}
    for mode in ("semantic", "keyword", "hybrid"):
        # --min-score 0: keyword mode embeds the query too, so relevance has both measures.
        body = _search(cli, config, query, "--mode", mode, "--limit", "20", "--min-score", "0")
        relevance[mode] = {r["id"]: r["relevance"] for r in body["results"]}
        for r in body["results"]:
            assert r["relevance"] == max(r["similarity"] or 0, r["coverage"] or 0)
    shared = set(relevance["semantic"]) & set(relevance["keyword"]) & set(relevance["hybrid"])
    assert shared
    for memory_id in shared:  # one hit, one relevance, whatever the mode
        assert relevance["semantic"][memory_id] == relevance["keyword"][memory_id] == \
            relevance["hybrid"][memory_id]
    cut = sorted(relevance["hybrid"].values())[len(relevance["hybrid"]) // 2]
    for mode in ("semantic", "keyword", "hybrid"):
        kept = _search(cli, config, query, "--mode", mode, "--limit", "20", "--min-score",
                       str(cut))["results"]
        assert kept and all(r["relevance"] >= cut for r in kept)
        assert {r["id"] for r in kept} == {i for i, v in relevance[mode].items() if v >= cut}


def test_highlights_mark_the_matched_terms(cli, make_config, tmp_path) -> None:
    config = make_config()
    _load(cli, config, tmp_path, MEMORIES)
    body = _search(cli, config, "charges retried", "--mode", "keyword", "--highlight")
    top = body["results"][0]
    marked = [top["summary"][a:b] for a, b in top["highlights"]]
    assert "charged" in marked  # stemmed: charges ~ charged
    body = _search(cli, config, "statement_timeout_ms", "--mode", "hybrid")  # exact: always
    top = body["results"][0]
    assert [top["summary"][a:b] for a, b in top["highlights"]] == ["statement_timeout_ms"]


def test_marked_cells_stay_inert() -> None:
    from aegisctl import output

    text = output._marked(output.Marked("a\x1b[31m PRAGMA busy", ((7, 13),)))
    assert text.plain == "a\\x1b[31m PRAGMA busy"  # the escape is shown, not obeyed
    styled = [text.plain[s.start:s.end] for s in text.spans]
    assert styled == ["PRAGMA"]


def test_empty_query_is_a_usage_error(cli, make_config) -> None:
    config = make_config()
    result = cli("--config", str(config), "memory", "search", "   ")
    assert result.exit_code == 2 and "empty" in result.stderr


def test_semantic_limit_is_filled_after_folding_duplicates(cli, make_config, tmp_path) -> None:
    config = make_config()
    text = "Billing database backup failed because the disk was full last night"
    records = [episodic(text + "!" * n) for n in range(4)]
    records += [episodic(f"Unrelated note number {n} about deploy pods") for n in range(4)]
    _load(cli, config, tmp_path, records)
    body = _search(cli, config, "billing backup failed", "--mode", "semantic", "--limit", "3")
    assert len(body["results"]) == 3  # the 3 copies folded, two more fetched
    assert len(body["results"][0]["duplicates"]) == 3


def test_coverage_is_the_same_whichever_path_computes_it(cli, make_config, tmp_path) -> None:
    """Semantic mode measures coverage in Python from the rows' lexemes; hybrid and keyword
    ask the server (`tsv @@ lexeme`). A memory's coverage must not depend on the mode, quotes
    and backslashes in the query included."""
    config = make_config()
    records = [*MEMORIES, episodic("O'Reilly's back\\slash note on the billing charge",
                                   event_type="learning")]
    _load(cli, config, tmp_path, records)
    for query in ("billing charge retry table", "O'Reilly's back\\slash billing"):
        by_mode = {mode: {r["id"]: r["coverage"] for r in _search(
            cli, config, query, "--mode", mode, "--limit", "20", "--no-dedupe")["results"]}
            for mode in ("semantic", "hybrid")}
        shared = set(by_mode["semantic"]) & set(by_mode["hybrid"])
        assert len(shared) >= 5
        assert any(by_mode["semantic"][i] > 0 for i in shared)
        for memory_id in shared:
            assert by_mode["semantic"][memory_id] == by_mode["hybrid"][memory_id], memory_id
