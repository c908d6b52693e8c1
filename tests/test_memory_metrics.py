"""The ranking metrics of `memory eval` and bench/relevance.py, against values worked by hand."""

from __future__ import annotations

import math

import pytest

from aegisctl.memory.metrics import MetricSums, first_rank, ndcg, reciprocal_rank, success_at


def test_metrics_match_hand_computed_values() -> None:
    ranked = ["a", "b", "c", "d", "e", "f"]
    assert first_rank(ranked, {"c", "f"}) == 3
    assert first_rank(ranked, {"z"}) is None
    assert success_at(ranked, {"c"}, 3) == 1.0 and success_at(ranked, {"c"}, 2) == 0.0
    assert reciprocal_rank(ranked, {"c", "f"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranked, {"f"}, k=5) == 0.0  # past the cut
    # Relevant at ranks 2 and 5 of 2 relevant: DCG 1/log2(3) + 1/log2(6), ideal 1 + 1/log2(3).
    expected = (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert ndcg(ranked, {"b", "e"}) == pytest.approx(expected)
    assert ndcg(["b", "b"], {"b"}) == 1.0  # a memory counts once
    assert ndcg(ranked, set()) == 0.0
    # More relevant memories than k: the ideal is k hits, so a perfect top k scores 1.
    assert ndcg(ranked, set(ranked), k=3) == 1.0


def test_metric_sums_average_over_questions() -> None:
    sums = MetricSums(ks=(1, 5))
    sums.add(["a", "b"], {"a"})
    sums.add(["x", "y", "b"], {"b"})
    sums.add(["x"], {"q"})
    means = sums.means()
    assert means["success@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert means["success@5"] == pytest.approx(2 / 3, abs=1e-4)
    assert means["mrr@10"] == pytest.approx((1 + 1 / 3) / 3, abs=1e-4)
    assert MetricSums().mean("mrr@10") == 0.0
