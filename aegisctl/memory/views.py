"""Result objects of the memory commands: one JSON form each, and the view a person sees.

`to_json()` is the stable JSON (`--format json`); `records()`, where present, are the JSON
lines of `--format jsonl`; `to_view()` is rendered by `aegisctl.output` (inert text, ids never
truncated, long text wrapped).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.memory.refs import record_time, text_of

if TYPE_CHECKING:
    from aegisctl.memory.search import Explain, Hit
    from aegisctl.output import Block, Marked

SNIPPET = 200


def age(record: dict[str, Any], now: dt.datetime | None = None) -> str:
    when = record_time(record)
    if when is None:
        return "-"
    seconds = max(0.0, ((now or dt.datetime.now(dt.UTC)) - when).total_seconds())
    for unit, size in (("y", 365 * 86400), ("mo", 30 * 86400), ("d", 86400), ("h", 3600),
                       ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def snippet(record: dict[str, Any]) -> str:
    text = " ".join(text_of(record).split())
    return text if len(text) <= SNIPPET else text[:SNIPPET - 1] + "…"


def marked_snippet(text: str, query: str | None,
                   spans: Sequence[tuple[int, int]] | None = None,
                   width: int = SNIPPET) -> Marked:
    """The text on one line, cut at `width`, with the matched terms to emphasise: the search's
    `highlights` spans, else the query's words (by prefix). An `output.Marked` cell: printed
    inert like any other."""
    from aegisctl.output import Marked

    if spans is None:
        words = [w for w in re.findall(r"\w+", (query or "").lower()) if len(w) >= 3]
        spans = []
        if words:
            stems = sorted({w[:max(3, len(w) - 2)] for w in words}, key=len, reverse=True)
            pattern = re.compile(r"\b(" + "|".join(map(re.escape, stems)) + r")\w*",
                                 re.IGNORECASE)
            spans = [m.span() for m in pattern.finditer(text)]
    marked = [False] * len(text)
    for start, end in spans:
        for i in range(max(0, start), min(end, len(text))):
            marked[i] = True
    chars: list[tuple[str, bool]] = []
    for char, flag in zip(text, marked, strict=True):
        if char.isspace():
            if chars and chars[-1][0] != " ":
                chars.append((" ", False))
            continue
        chars.append((char, flag))
    while chars and chars[-1][0] == " ":
        chars.pop()
    if len(chars) > width:
        chars = [*chars[:width - 1], ("…", False)]
    out: list[tuple[int, int]] = []
    position = 0
    for flag, group in itertools.groupby(chars, key=lambda c: c[1]):
        size = len(list(group))
        if flag:
            out.append((position, position + size))
        position += size
    return Marked("".join(c for c, _ in chars), tuple(out))


def what(record: dict[str, Any]) -> str:
    """The event type or category (the id already says which kind)."""
    if record["kind"] == "episodic":
        return str(record.get("event_type"))
    return str(record.get("category") or "-")


def importance(record: dict[str, Any]) -> str:
    if record["kind"] == "episodic":
        return str(record.get("importance") or "-")
    confidence = record.get("confidence")
    return "-" if confidence is None else f"conf {confidence:g}"


def explain_lines(explain: Explain) -> list[str]:
    lines = [f"mode: {explain.mode}"]
    if explain.provider:
        lines.append(f"provider: {explain.provider} ({explain.model})")
    lines.append(f"time: embedding {explain.embed_ms:.1f} ms, searching "
                 f"{explain.search_ms:.1f} ms")
    if explain.fusion:
        fusion = explain.fusion
        lines.append(f"fusion: semantic weight {fusion['semantic_weight']:.2f} (strength "
                     f"{fusion['semantic_strength']:.2f}), keyword weight "
                     f"{fusion['keyword_weight']:.2f} (strength "
                     f"{fusion['keyword_strength']:.2f}): {fusion['reason']}")
        lines.append(f"safeguard: {fusion['safeguard']}")
    if explain.rerank_ms:
        lines.append(f"rerank: {explain.rerank_ms:.1f} ms")
    for path in explain.paths:
        lines.append(f"{path.kind} {path.signal}: {path.path} -> {path.rows} rows")
        lines.extend(f"    {line}" for line in path.plan)
    return lines


@dataclass
class HitList:
    """search and similar."""

    hits: list[Hit]
    header: dict[str, Any]  # {"query": ..., "mode": ...} or {"id": ...}
    explain: Explain | None = None

    def records(self) -> list[dict[str, Any]]:
        """Scores that are not numbers (cosine with a zero vector is NaN) become null: NaN is
        not JSON."""
        out = []
        for hit in self.hits:
            record = hit.to_json()
            for key in ("score", "similarity", "keyword_score", "decay"):
                value = record.get(key)
                if isinstance(value, float) and not math.isfinite(value):
                    record[key] = None
            out.append(record)
        return out

    def to_json(self) -> dict[str, Any]:
        out = {**self.header, "count": len(self.hits), "results": self.records()}
        if self.explain is not None:
            out["explain"] = dataclasses.asdict(self.explain)
        return out

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        rows: list[Sequence[Any]] = []
        for hit in self.hits:  # ranks per signal: in the JSON and in --explain
            score = f"{hit.score:.4f}" if math.isfinite(hit.score) else "-"
            rows.append((score, age(hit.record), what(hit.record), importance(hit.record),
                         hit.record["id"],
                         marked_snippet(text_of(hit.record), self.header.get("query"),
                                        hit.highlights)))
        blocks: list[Block] = [Table(
            [Column("score", "number"), "age", "type", "importance", Column("id", "id"),
             Column("memory", "text")], rows, empty="no memory matched")]
        if self.explain is not None:
            blocks.extend(Note(line) for line in explain_lines(self.explain))
        return blocks


@dataclass
class MemoryList:
    """recent."""

    memories: list[dict[str, Any]]

    def records(self) -> list[dict[str, Any]]:
        return self.memories

    def to_json(self) -> dict[str, Any]:
        return {"count": len(self.memories), "memories": self.memories}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Table

        return [Table(["age", "type", "importance", Column("id", "id"),
                       Column("memory", "text")],
                      [(age(r), what(r), importance(r), r["id"], snippet(r))
                       for r in self.memories], empty="no memories")]


@dataclass
class MemoryRecord:
    """show."""

    record: dict[str, Any]

    def records(self) -> list[dict[str, Any]]:
        return [self.record]

    def to_json(self) -> dict[str, Any]:
        return self.record

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields

        pairs: list[tuple[str, Any]] = []
        for key, value in self.record.items():
            if key == "embedding" and value is not None:
                value = (f"[{', '.join(f'{x:.4f}' for x in value[:6])}, …] "
                         f"({len(value)} dims)")
            elif isinstance(value, dict | list):
                value = json.dumps(value, ensure_ascii=False)
            pairs.append((key, "" if value is None else str(value)))
        return [Fields(pairs, title=str(self.record.get("id")))]


@dataclass
class ExportResult:
    count: int = 0
    path: str | None = None
    kinds: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"exported": self.count, "path": self.path, "kinds": self.kinds}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        return [Note(f"exported {self.count} memories to {self.path}")]
