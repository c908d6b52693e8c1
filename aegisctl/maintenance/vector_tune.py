"""`maint vector-index --tune`: the smallest hnsw.ef_search (and iterative scan setting) whose
recall@10 meets a target on every configured filter shape and on unfiltered search.

Each step is measured on the same sampled queries (see diagnostics/filtered_recall.py) and its
latency reported, so the cost of every step up is visible. The chosen settings are applied
only with --yes, as database defaults (`ALTER DATABASE ... SET`): every new session, the
agent's included, gets them; sessions that set their own keep theirs. aegisctl's config file
is never rewritten (its own search reads `search.ef_search` / `search.iterative_scan`: the
result says which values to put there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed, UsageError

if TYPE_CHECKING:
    import psycopg

    from aegisctl.diagnostics.filtered_recall import Case
    from aegisctl.diagnostics.settings import FilterShape
    from aegisctl.output import Block

EF_STEPS = (10, 20, 40, 64, 100, 150, 200, 300, 400, 600, 800, 1000)
# Tried only when no ef_search step meets the target: a longer iterative walk.
SCAN_TUPLES_STEPS = (50_000, 100_000, 200_000)
# pgvector's default hnsw.max_scan_tuples: the steps that do not raise it are measured with it
# (never with whatever the database has), and applying them sets it back when needed.
DEFAULT_SCAN_TUPLES = 20_000


@dataclass
class TuneStep:
    ef_search: int
    iterative_scan: str
    max_scan_tuples: int | None
    min_recall: float | None
    worst: str | None
    short_share: float | None  # over every shape's queries
    p50_ms: float | None
    p95_ms: float | None
    meets: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TuneResult:
    database: str
    target_recall: float
    sample: int
    shapes: list[dict[str, Any]]
    current: dict[str, str | None]
    steps: list[TuneStep] = field(default_factory=list)
    chosen: TuneStep | None = None
    statements: list[str] = field(default_factory=list)
    applied: bool = False
    # Why --yes could not apply the choice (no right to ALTER DATABASE, a standby...).
    apply_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.chosen is not None and self.apply_error is None

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "target_recall": self.target_recall,
                "sample": self.sample, "shapes": self.shapes, "current": self.current,
                "steps": [s.to_json() for s in self.steps],
                "chosen": self.chosen.to_json() if self.chosen else None,
                "statements": self.statements, "applied": self.applied,
                "apply_error": self.apply_error, "notes": self.notes}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        rows: list[Sequence[Any]] = [(s.ef_search, s.iterative_scan, s.max_scan_tuples or "-",
                 None if s.min_recall is None else f"{s.min_recall:.3f}", s.worst,
                 None if s.short_share is None else f"{s.short_share:.0%}", s.p50_ms, s.p95_ms,
                 "yes" if s.meets else "no") for s in self.steps]
        blocks: list[Block] = [
            Table([Column("ef_search", "number"), Column("iterative_scan", "id"),
                   Column("max_scan_tuples", "number"), Column("min recall", "number"),
                   Column("worst shape", "text"), Column("short", "number"),
                   Column("p50 ms", "number"), Column("p95 ms", "number"),
                   Column("meets", "id")], rows,
                  title=f"vector-index --tune: recall@10 target {self.target_recall:g}, "
                        f"{self.sample} queries per shape", empty="no step measured")]
        now = ", ".join(f"{k} {v}" for k, v in self.current.items() if v is not None)
        blocks.append(Note(f"database {self.database} now: {now or 'pgvector defaults'}"))
        if self.chosen is None:
            blocks.append(Note("no step met the target: nothing to apply", "red"))
        else:
            verb = ("applied" if self.applied else
                    "not applied: run these as the database's owner or a superuser"
                    if self.apply_error else "would apply (run again with --yes)")
            blocks.append(Note(f"chosen: hnsw.ef_search {self.chosen.ef_search}, "
                               f"hnsw.iterative_scan {self.chosen.iterative_scan}; {verb}:"))
            blocks += [Note(statement + ";", wrap=False) for statement in self.statements]
        if self.apply_error:
            blocks.append(Note(f"cannot change the database's defaults: {self.apply_error}",
                               "red"))
        blocks += [Note(n) for n in self.notes]
        return blocks


def _step(conn: psycopg.Connection[Any], schema: str, cases: list[Case], ef_search: int,
          mode: str, scan_tuples: int | None, target: float, iterative: bool) -> TuneStep:
    from aegisctl.diagnostics.filtered_recall import p95, run_case

    recalls: list[tuple[float, str]] = []
    latencies: list[float] = []
    short = queries = 0
    for case in cases:
        measure = run_case(conn, schema, case, ef_search, mode,
                           (scan_tuples or DEFAULT_SCAN_TUPLES) if iterative else None,
                           iterative)
        latencies += measure.latencies_ms
        if measure.recall is not None and measure.short_share is not None:
            recalls.append((measure.recall, case.label))
            answered = sum(1 for truth in case.exact if truth)
            short += round(measure.short_share * answered)
            queries += answered
    low = min(recalls) if recalls else None
    ordered = sorted(latencies)
    return TuneStep(ef_search, mode, scan_tuples, None if low is None else low[0],
                    None if low is None else low[1],
                    round(short / queries, 4) if queries else None,
                    round(ordered[len(ordered) // 2], 2) if ordered else None, p95(latencies),
                    low is not None and low[0] >= target)


def _statements(conn: psycopg.Connection[Any], database: str, step: TuneStep,
                iterative: bool, current: dict[str, str | None]) -> list[Any]:
    from psycopg import sql

    db = sql.Identifier(database)
    values = [("hnsw.ef_search", str(step.ef_search))]
    if iterative:
        values.append(("hnsw.iterative_scan", step.iterative_scan))
        tuples = step.max_scan_tuples or DEFAULT_SCAN_TUPLES
        if step.max_scan_tuples is not None or current.get("max_scan_tuples") not in (
                None, str(tuples)):
            values.append(("hnsw.max_scan_tuples", str(tuples)))
    return [sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, sql.SQL(name),
                                                            sql.Literal(value))
            for name, value in values]


def check_tune_arguments(target: float, sample: int) -> None:
    """Before any connection: a usage error is exit 2 whether or not the server answers."""
    if not 0 < target <= 1:
        raise UsageError(f"--target-recall {target}: a recall between 0 and 1, e.g. 0.95")
    if sample < 1:
        raise UsageError("--sample must be at least 1")


def tune_vector_search(conn: psycopg.Connection[Any], indexes: list[dict[str, Any]],
                       shapes: list[FilterShape], *, target: float, sample: int,
                       apply: bool, seed: float | None = None) -> TuneResult:
    from aegisctl.diagnostics.advice import vector_schema
    from aegisctl.diagnostics.filtered_recall import (
        build_cases,
        database_hnsw_settings,
        prepare_case,
    )
    from aegisctl.memory.search.pg import pgvector_version

    check_tune_arguments(target, sample)
    schema = vector_schema(conn)
    if schema is None:
        raise OperationFailed("the vector extension is not installed in this database",
                              hint="run aegisctl schema init")
    if not indexes:
        raise UsageError("no valid HNSW index to tune for")
    row = conn.execute("SELECT current_database()").fetchone()
    database = str(row[0]) if row else ""
    current = database_hnsw_settings(conn)
    iterative = pgvector_version(conn) >= (0, 8)
    cases = build_cases(indexes, shapes, unfiltered=True)
    for case in cases:
        prepare_case(conn, schema, case, sample, seed)
    # (A table with no vectors at all is no shape's fault: left out of the notes.)
    unmatched = [c for c in cases if c.vectors and not any(c.exact)]
    cases = [c for c in cases if any(c.exact)]
    if not cases:
        raise OperationFailed("nothing to tune on: no stored vectors in the HNSW-indexed "
                              "tables", hint="tune once the agent has stored memories")
    result = TuneResult(database, target, sample,
                        [{"shape": c.shape, "table": c.index["table"], "index": c.index["index"],
                          "matching_rows": c.matching_rows} for c in cases], current)
    # A shape nothing matches (often a typo'd tag or context value) is not measured: said,
    # so that a target "met" is not taken to cover it.
    result.notes += [f"{c.label}: no row matches this shape: not measured" for c in unmatched]
    if not iterative:
        result.notes.append("pgvector is older than 0.8: no iterative scans, only ef_search "
                            "is tuned (a selective filter may still return short results)")
    smallest: int | None = None
    # strict_order before relaxed_order: relaxed results may come slightly out of distance
    # order, which a database-wide default would impose on every query that does not
    # re-sort; it is chosen only when it meets the target at a smaller ef_search.
    for mode in ("off", "strict_order", "relaxed_order") if iterative else ("off",):
        # A later mode is worth trying only below the smallest ef_search that already met it.
        for ef in EF_STEPS:
            if smallest is not None and ef >= smallest:
                break
            step = _step(conn, schema, cases, ef, mode, None, target, iterative)
            result.steps.append(step)
            if step.meets:
                smallest = ef
                break
    if iterative and not any(s.meets for s in result.steps):
        for tuples in SCAN_TUPLES_STEPS:
            step = _step(conn, schema, cases, EF_STEPS[-1], "strict_order", tuples, target,
                         iterative)
            result.steps.append(step)
            if step.meets:
                break
    meeting = [s for s in result.steps if s.meets]
    if not meeting:
        return result
    result.chosen = min(meeting, key=lambda s: (s.ef_search, s.max_scan_tuples or 0,
                                                s.p95_ms or 0.0))
    statements = _statements(conn, database, result.chosen, iterative, current)
    result.statements = [s.as_string(conn) for s in statements]
    result.notes.append(
        f"aegisctl's own `memory search` uses search.ef_search and search.iterative_scan from "
        f"its config (not written by --tune): set them to {result.chosen.ef_search} and "
        f"{result.chosen.iterative_scan} to match")
    if apply:
        import psycopg

        # Minutes of measurements stay the result when the choice cannot be applied: they
        # and the statements are what the database's owner needs to run it by hand.
        try:
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement)
        except psycopg.Error as exc:
            result.apply_error = str(exc).strip().splitlines()[0] if str(exc).strip() \
                else type(exc).__name__
            return result
        result.applied = True
        result.notes.append("new sessions get these settings; open sessions keep theirs until "
                            "they reconnect")
    return result
