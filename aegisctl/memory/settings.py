"""The `memory:` section of the configuration (see config.example.yaml).

Kept beside the code that uses it; aegisctl.config plugs it into `Settings`. This module imports
nothing but the config types, so loading the config stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

# The same marker aegisctl.config uses for values written with a unit ("64MB").
Size = Annotated[int, "size"]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


@dataclass
class ReembedEvalSettings:
    """A labelled question file (`memory eval` format) that `memory reembed` runs after
    re-embedding: it fails when `metric` in `mode` fell more than `max_drop` below the baseline
    saved by `memory eval FILE --save-baseline` (or by the last re-embed that passed)."""

    file: str
    mode: Literal["keyword", "semantic", "hybrid"] = "hybrid"
    metric: Literal["success@5", "mrr@10", "ndcg@10"] = "mrr@10"
    max_drop: float = 0.05


@dataclass
class MemorySettings:
    # The longest line `memory import` accepts (bytes, newline excluded). A longer line is
    # reported as a bad line by its number without being read into memory. A line holding a
    # 1536-dimension embedding is about 30 kB.
    max_line_bytes: Size = DEFAULT_MAX_LINE_BYTES
    reembed_eval: ReembedEvalSettings | None = None
