"""Hybrid's safeguard: fusion may not bury the first hit of the signal that is sure of itself.
Against the embedded server and the tests' real HTTP embedding server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memory_fixtures import episodic, jsonl

from aegisctl.config import SearchSettings
from aegisctl.memory.search import Hit, Weights, fuse

# The answer shares no word with the question, only its meaning (card payments, again). The
# question's words are each in a few memories about money or retries, so both signals put
# those in their top 10 and the agreement bonus lifts them above semantic's first hit, while
# no memory holds most of the question's terms (the keyword signal is weak).
ANSWER = "Declined card payments are attempted again after a short pause"
MEMORIES = [
    episodic(ANSWER, event_type="learning"),
    episodic("The billing dashboard lists the invoice totals per week"),
    episodic("Billing export to the warehouse runs at night"),
    episodic("Billing emails use the new customer template"),
    episodic("The billing team owns the price page"),
    episodic("Billing reports moved to the shared drive"),
    episodic("Retry the nightly export when the network drops"),
    episodic("A webhook retry happens once per hour"),
    episodic("Charge disputes are handled by the finance desk"),
    episodic("Each charge shows up on the monthly statement"),
    episodic("Deploy pods roll out one at a time"),
]
QUERY = "how do we retry a billing charge that did not go through"


def _load(cli: Any, config: Path, tmp_path: Path) -> None:
    path = tmp_path / "load.jsonl"
    path.write_text(jsonl(MEMORIES))
    result = cli("--config", str(config), "memory", "import", str(path), "-f", "json")
    assert result.exit_code == 0, result.output


def _summaries(cli: Any, config: Path, *extra: str) -> tuple[list[str], dict[str, Any]]:
    result = cli("--config", str(config), "memory", "search", QUERY, "--limit", "5",
                 "-f", "json", *extra)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    return [r["summary"] for r in body["results"]], body


def test_semantic_first_hit_survives_a_weak_keyword_signal(cli, make_config,
                                                          tmp_path) -> None:
    config = make_config()
    _load(cli, config, tmp_path)
    semantic, _ = _summaries(cli, config, "--mode", "semantic")
    assert semantic[0] == ANSWER  # the vectors know the answer

    # Without the safeguard (the last release's fusion), agreement on "billing" pushes the
    # answer out of hybrid's top 5: hybrid would lose to semantic search on this question.
    old, body = _summaries(cli, make_config(search={"safeguard": False}), "--explain")
    assert ANSWER not in old
    assert body["explain"]["fusion"]["safeguard"] == "off (search.safeguard: false)"

    new, body = _summaries(cli, make_config(), "--explain")
    assert new.index(ANSWER) == 1  # kept in the top 2, after fusion's own first
    assert new[0] == old[0] and [s for s in new if s != ANSWER] == old[:4]
    fusion = body["explain"]["fusion"]
    assert fusion["keyword_strength"] < 0.6
    assert fusion["safeguard"].startswith("semantic's first hit moved from place 10 to 2")
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)  # still ranked by score (a tie at most)

    table = cli("--config", str(make_config()), "memory", "search", QUERY, "--explain",
                "-f", "table")
    assert table.exit_code == 0, table.output
    assert "safeguard: semantic's first hit moved from place 10 to 2" in table.output


def _hit(n: int, **ranks: int) -> Hit:
    return Hit(kind="semantic", id=n, record={"id": f"semantic:{n}", "kind": "semantic",
                                              "concept": "c", "content": f"text {n}"},
               similarity=0.5, ranks=dict(ranks))


def test_keyword_first_hit_survives_when_keyword_is_strong_and_idle_in_between() -> None:
    settings = SearchSettings(rrf_k=10)
    # Semantic's first six agree with keyword's 2..7; keyword's own first is semantic-blind.
    semantic = [_hit(n, semantic=n) for n in range(1, 7)]
    keyword = [_hit(9, keyword=1), *[_hit(n, keyword=n + 1) for n in range(1, 7)]]

    def order(strength: float, guard: bool = True) -> tuple[list[int], str]:
        weights = Weights(1.0, 0.75, keyword_strength=strength, semantic_strength=1.0,
                          measured=True)
        search = SearchSettings(rrf_k=10, safeguard=guard)
        fused = fuse([*semantic], [*keyword], "hybrid", search, weights=weights)
        return [h.id for h in fused], weights.safeguard

    unguarded, said = order(0.9, guard=False)
    assert unguarded.index(9) > 1 and said == "off (search.safeguard: false)"
    kept, said = order(0.9)
    assert kept[:2] == [unguarded[0], 9] and said.startswith("keyword's first hit moved")
    between, said = order(0.7)
    assert between == unguarded and said.startswith("idle: keyword strength 0.70")
    weak, said = order(0.1)  # semantic's first is fusion's first already: nothing moves
    assert weak == unguarded and said.startswith("semantic's first hit is in place 1")
    assert settings.safeguard  # on by default
