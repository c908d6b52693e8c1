"""`memory eval`: run a labelled question file against the live database, per search mode.

The file is JSON lines, one question each:

    {"question": "how do we retry a failed charge", "relevant": ["episodic:12", "semantic:40"]}
    {"question": "PRAGMA busy_timeout", "sources": ["pragma.html"], "kind": "semantic"}

`relevant` names memory ids; `sources` names values of semantic memories' `source` column (every
memory from that source counts as an answer); a line needs at least one of them. `kind`
(episodic | semantic) limits that question's search. Lines that are empty or start with # are
skipped. Every line is validated before any search runs.

Each mode runs every question through the same search core as `memory search`, with --limit 10,
and reports success@k, MRR@10 and nDCG@10 (aegisctl.memory.metrics), plus hybrid + rerank when
search.rerank is configured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.config import Settings
from aegisctl.errors import UsageError
from aegisctl.memory.filters import Filters
from aegisctl.memory.metrics import MetricSums
from aegisctl.memory.refs import Kind, parse_ref

if TYPE_CHECKING:
    import psycopg

    from aegisctl.memory.providers import EmbeddingProvider
    from aegisctl.output import Block

MAX_QUESTIONS = 10_000
MAX_QUESTION_CHARS = 2_000


@dataclass
class EvalQuestion:
    question: str
    relevant: set[str] = field(default_factory=set)  # "kind:id"
    sources: list[str] = field(default_factory=list)
    kind: Kind | None = None


def load_questions(path: Path) -> list[EvalQuestion]:
    """The question file, validated line by line (a bad line names its number and problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"question file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the question file {path}: {exc}") from None
    questions: list[EvalQuestion] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        questions.append(_parse_line(line, f"{path}:{number}"))
        if len(questions) > MAX_QUESTIONS:
            raise UsageError(f"{path}: more than {MAX_QUESTIONS} questions")
    if not questions:
        raise UsageError(f"{path} holds no question",
                         hint='one JSON object a line: {"question": "...", "relevant": '
                              '["episodic:12"]}')
    return questions


def _parse_line(line: str, where: str) -> EvalQuestion:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise UsageError(f"{where}: expected a JSON object")
    unknown = set(item) - {"question", "relevant", "sources", "kind", "id"}
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                         hint="keys: question, relevant, sources, kind, id")
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UsageError(f"{where}: 'question' must be a non-empty string")
    if len(question) > MAX_QUESTION_CHARS:
        raise UsageError(f"{where}: the question is longer than {MAX_QUESTION_CHARS} characters")
    relevant, sources = item.get("relevant", []), item.get("sources", [])
    for key, value in (("relevant", relevant), ("sources", sources)):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{where}: '{key}' must be a list of strings")
    if not relevant and not sources:
        raise UsageError(f"{where}: name the answers in 'relevant' (memory ids) or 'sources'")
    try:
        ids = {str(parse_ref(v)) for v in relevant}
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}", hint=exc.hint) from None
    kind = item.get("kind")
    if kind not in (None, "episodic", "semantic"):
        raise UsageError(f"{where}: 'kind' must be episodic or semantic")
    return EvalQuestion(question=question, relevant=ids, sources=list(sources), kind=kind)


@dataclass
class ModeScores:
    mode: str
    metrics: dict[str, float]
    questions: int
    p95_ms: float


@dataclass
class EvalResult:
    path: str
    questions: int
    k: int
    modes: list[ModeScores] = field(default_factory=list)
    unanswerable: int = 0  # questions none of whose answers is in the database

    def score(self, mode: str, metric: str) -> float | None:
        for entry in self.modes:
            if entry.mode == mode:
                return entry.metrics.get(metric)
        return None

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path, "questions": self.questions, "k": self.k,
                "unanswerable": self.unanswerable,
                "modes": {m.mode: {**m.metrics, "p95_ms": m.p95_ms} for m in self.modes}}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        names = [f"success@{self.k}", "mrr@10", "ndcg@10"]
        rows: list[Sequence[Any]] = [
            (m.mode, *(f"{m.metrics[n]:.3f}" for n in names), f"{m.p95_ms:.1f}")
            for m in self.modes]
        blocks: list[Block] = [Table(["mode", *(Column(n, "number") for n in names),
                                      Column("p95 ms", "number")], rows)]
        note = f"{self.questions} questions from {self.path}"
        if self.unanswerable:
            note += (f"; {self.unanswerable} name no memory that exists (they count as "
                     "misses)")
        blocks.append(Note(note))
        return blocks


def _resolve(conn: psycopg.Connection[Any], question: EvalQuestion) -> set[str]:
    """The question's answers as memory ids: its ids plus every memory from its sources."""
    found = set(question.relevant)
    if question.sources:
        rows = conn.execute("SELECT id FROM semantic_memory WHERE source = ANY(%s)",
                            (question.sources,)).fetchall()
        found.update(f"semantic:{r[0]}" for r in rows)
    return found


def _existing(conn: psycopg.Connection[Any], ids: set[str]) -> set[str]:
    from psycopg import sql

    from aegisctl.memory.refs import KINDS, TABLES

    kept: set[str] = set()
    for kind in KINDS:
        numbers = [int(i.split(":")[1]) for i in ids if i.startswith(kind + ":")]
        if numbers:
            rows = conn.execute(sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(
                sql.Identifier(TABLES[kind].table)), (numbers,)).fetchall()
            kept.update(f"{kind}:{r[0]}" for r in rows)
    return kept


def available_modes(settings: Settings, provider: EmbeddingProvider | None) -> list[str]:
    modes = ["keyword"]
    if provider is not None:
        modes += ["semantic", "hybrid"]
        if settings.search.rerank is not None:
            modes.append("hybrid+rerank")
    return modes


def run_eval(conn: psycopg.Connection[Any], settings: Settings,
             provider: EmbeddingProvider | None, dim: int, questions: list[EvalQuestion],
             path: str, modes: list[str] | None = None, k: int = 5) -> EvalResult:
    from aegisctl.memory.providers import embed_texts
    from aegisctl.memory.search import SearchRequest, search

    possible = available_modes(settings, provider)
    modes = modes or possible
    for mode in modes:
        if mode not in possible:
            raise UsageError(f"mode {mode} is not available here",
                             hint="semantic and hybrid need an embedding provider; "
                                  "hybrid+rerank needs search.rerank")
    answers = [_existing(conn, _resolve(conn, q)) for q in questions]
    result = EvalResult(path=path, questions=len(questions), k=k,
                        unanswerable=sum(1 for a in answers if not a))
    # The questions are embedded once, for every mode that needs it.
    vectors: list[Any] = [None] * len(questions)
    if provider is not None and modes != ["keyword"]:
        vectors = embed_texts(provider, [q.question for q in questions])
    for mode in modes:
        sums = MetricSums(ks=(k,))
        seconds: list[float] = []
        base = "hybrid" if mode == "hybrid+rerank" else mode
        for question, vector, relevant in zip(questions, vectors, answers, strict=True):
            request = SearchRequest(query=question.question, limit=10, mode=base,  # type: ignore[arg-type]
                                    filters=Filters(kind=question.kind), highlight=False,
                                    vector=vector if base != "keyword" else None,
                                    rerank=mode == "hybrid+rerank")
            started = time.perf_counter()
            hits = search(conn, settings, request, provider, dim).hits
            seconds.append(time.perf_counter() - started)
            sums.add([str(h.record["id"]) for h in hits], relevant)  # type: ignore[arg-type]
        ordered = sorted(seconds)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000
        result.modes.append(ModeScores(mode=mode, metrics=sums.means(),
                                       questions=len(questions), p95_ms=round(p95, 1)))
    return result


BASELINE_KEY = "memory_eval_baseline"


def save_baseline(conn: psycopg.Connection[Any], result: EvalResult) -> None:
    """Keep `result`'s figures in aegis_metadata: what `memory reembed` compares against."""
    value = json.dumps({"file": result.path, "k": result.k,
                        "modes": {m.mode: m.metrics for m in result.modes}})
    with conn.transaction():
        conn.execute(
            "INSERT INTO aegis_metadata (key, value, updated_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            (BASELINE_KEY, value))


def baseline(conn: psycopg.Connection[Any], path: str, mode: str, metric: str) -> float | None:
    """The saved figure for this question file, mode and metric (None: nothing comparable)."""
    row = conn.execute("SELECT value FROM aegis_metadata WHERE key = %s",
                       (BASELINE_KEY,)).fetchone()
    if row is None:
        return None
    try:
        saved = json.loads(row[0])
        if str(Path(saved["file"]).resolve()) != str(Path(path).resolve()):
            return None  # another question file: not comparable
        value = saved["modes"][mode][metric]
    except (ValueError, KeyError, TypeError):
        return None  # written by something else, or for another mode: no baseline
    return float(value) if isinstance(value, int | float) else None


@dataclass
class GateResult:
    mode: str
    metric: str
    value: float
    baseline: float | None
    max_drop: float

    @property
    def passed(self) -> bool:
        return self.baseline is None or self.value >= self.baseline - self.max_drop - 1e-9

    def line(self) -> str:
        against = ("no baseline yet: saved this one" if self.baseline is None
                   else f"baseline {self.baseline:.3f}, allowed drop {self.max_drop:g}")
        return f"eval after re-embedding: {self.metric} ({self.mode}) {self.value:.3f} ({against})"


def gate_after_reembed(conn: psycopg.Connection[Any], settings: Settings,
                       provider: EmbeddingProvider | None, dim: int,
                       questions: list[EvalQuestion]) -> GateResult:
    """Run memory.reembed_eval on the new vectors and compare it with the saved baseline; a
    pass becomes the new baseline."""
    gate = settings.memory.reembed_eval
    assert gate is not None
    result = run_eval(conn, settings, provider, dim, questions, gate.file, [gate.mode], 5)
    outcome = GateResult(gate.mode, gate.metric, result.score(gate.mode, gate.metric) or 0.0,
                         baseline(conn, gate.file, gate.mode, gate.metric), gate.max_drop)
    if outcome.passed:
        save_baseline(conn, result)
    return outcome
