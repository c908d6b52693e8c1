"""Ranking metrics with binary relevance, as `memory eval` and bench/relevance.py report them.

success@k: 1 when a relevant memory is in the first k hits. MRR@k: 1 / the rank of the first
relevant hit (0 past k). nDCG@k: DCG of the hits (gain 1 for a relevant one, discounted by
log2(rank + 1)) over the DCG of an ideal ranking of the relevant memories (at most k of them).
These are trec_eval's `success`, `recip_rank` (cut at k) and `ndcg_cut` for binary judgements;
written here (thirty lines) instead of depending on ir-measures (numpy, scipy and a C
extension) or ranx (numba, pandas, matplotlib) for a command-line tool.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


def first_rank(ranked: Sequence[Hashable], relevant: set[Hashable]) -> int | None:
    """The 1-based rank of the first relevant item, or None."""
    for rank, item in enumerate(ranked, start=1):
        if item in relevant:
            return rank
    return None


def success_at(ranked: Sequence[Hashable], relevant: set[Hashable], k: int) -> float:
    rank = first_rank(ranked[:k], relevant)
    return 0.0 if rank is None else 1.0


def reciprocal_rank(ranked: Sequence[Hashable], relevant: set[Hashable], k: int = 10) -> float:
    rank = first_rank(ranked[:k], relevant)
    return 0.0 if rank is None else 1.0 / rank


def ndcg(ranked: Sequence[Hashable], relevant: set[Hashable], k: int = 10) -> float:
    if not relevant:
        return 0.0
    seen: set[Hashable] = set()
    dcg = 0.0
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant and item not in seen:  # a memory counts once
            dcg += 1.0 / math.log2(rank + 1)
            seen.add(item)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal


@dataclass
class MetricSums:
    """Per-question metrics added up; `mean(name)` over the questions seen."""

    ks: tuple[int, ...] = (1, 5, 10)
    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, ranked: Sequence[Hashable], relevant: set[Hashable]) -> None:
        self.count += 1
        values = {f"success@{k}": success_at(ranked, relevant, k) for k in self.ks}
        values["mrr@10"] = reciprocal_rank(ranked, relevant, 10)
        values["ndcg@10"] = ndcg(ranked, relevant, 10)
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value

    def mean(self, name: str) -> float:
        return self.sums.get(name, 0.0) / self.count if self.count else 0.0

    def means(self) -> dict[str, float]:
        return {name: round(self.mean(name), 4) for name in self.sums}
