"""aegisctl memory: search, similar, show, recent, stats, add, import, export, reembed."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import AppState, OutputFormat, state
from aegisctl.errors import UsageError

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings
    from aegisctl.memory.filters import Filters
    from aegisctl.memory.providers import EmbeddingProvider
    from aegisctl.memory.refs import Kind
    from aegisctl.memory.search import Explain, Hit

app = typer.Typer(
    help=(
        "Search and manage the agent's memory: semantic, keyword and hybrid search; import, "
        "export and re-embedding.\n\n"
        "Memories are addressed as episodic:ID or semantic:ID.\n\n"
        "Example: aegisctl memory search \"billing retries\" --since 30d --type decision"
    ),
    no_args_is_help=True,
    add_completion=False,
)


class MemoryFormat(StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"


class KindChoice(StrEnum):
    episodic = "episodic"
    semantic = "semantic"
    all = "all"


class ModeChoice(StrEnum):
    semantic = "semantic"
    keyword = "keyword"
    hybrid = "hybrid"


class Importance(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


FormatOpt = Annotated[
    MemoryFormat | None,
    typer.Option("--format", "-f", help="table, json or jsonl (default: table on a terminal, "
                 "JSON lines when stdout is piped)."),
]
KindOpt = Annotated[KindChoice, typer.Option("--kind", "-k", help="Which memory table(s).")]
TypeOpt = Annotated[list[str] | None, typer.Option(
    "--type", help="Episodic event type (repeatable: any of them).")]
TagOpt = Annotated[list[str] | None, typer.Option(
    "--tag", help="Tag the memory must carry (repeatable: all of them).")]
MinImportanceOpt = Annotated[Importance | None, typer.Option(
    "--min-importance", help="Episodic importance at least this.")]
CategoryOpt = Annotated[list[str] | None, typer.Option(
    "--category", help="Semantic category (repeatable: any of them).")]
SinceOpt = Annotated[str | None, typer.Option(
    "--since", help="Newer than a duration ago (7d, 12h) or a date (2025-01-31).")]
UntilOpt = Annotated[str | None, typer.Option(
    "--until", help="Older than a duration ago or a date.")]
LimitOpt = Annotated[int | None, typer.Option(
    "--limit", "-n", min=1, max=1000, help="How many results (default: search.limit).")]
ExplainOpt = Annotated[bool, typer.Option(
    "--explain", help="Say which path each search took, the query plans, and the time spent "
    "embedding vs searching.")]


def _format(app_state: AppState, requested: MemoryFormat | None) -> MemoryFormat:
    if requested is not None:
        return requested
    if app_state.format is OutputFormat.json:
        return MemoryFormat.json
    return MemoryFormat.table if sys.stdout.isatty() else MemoryFormat.jsonl


def _filters(kind: KindChoice, types: list[str] | None, tags: list[str] | None,
             min_importance: Importance | None, categories: list[str] | None,
             since: str | None, until: str | None) -> Filters:
    from aegisctl.memory.filters import Filters, parse_when

    return Filters(
        kind=_kinds(kind)[0] if kind is not KindChoice.all else None,
        event_types=list(types or []), tags=list(tags or []),
        min_importance=min_importance.value if min_importance else None,
        categories=list(categories or []),
        since=parse_when(since) if since else None,
        until=parse_when(until) if until else None,
    )


def _kinds(kind: KindChoice) -> list[Kind]:
    return [k for k in ("episodic", "semantic") if kind.value in (k, "all")]


@contextmanager
def _session(ctx: typer.Context, command: str
             ) -> Iterator[tuple[AppState, Settings, psycopg.Connection[Any], int]]:
    from aegisctl.memory.browse import require_schema

    app_state = state(ctx)
    settings = app_state.config().settings
    with app_state.connect(f"memory {command}") as conn:
        yield app_state, settings, conn, require_schema(conn)


def _provider(settings: Settings, dim: int) -> EmbeddingProvider | None:
    from aegisctl.memory.providers import make_provider

    return make_provider(settings.embedding, dim)


def _require_provider(settings: Settings, dim: int) -> EmbeddingProvider:
    provider = _provider(settings, dim)
    if provider is None:
        raise UsageError("no embedding provider is configured (embedding.provider is none)",
                         hint="configure embedding: (openai, or local with "
                              "pip install 'aegisctl[local]')")
    return provider


# ---------------------------------------------------------------------------------------------
# Rendering


def _age(record: dict[str, Any]) -> str:
    from aegisctl.memory.refs import record_time

    when = record_time(record)
    if when is None:
        return "-"
    seconds = max(0.0, (dt.datetime.now(dt.UTC) - when).total_seconds())
    for unit, size in (("y", 365 * 86400), ("mo", 30 * 86400), ("d", 86400), ("h", 3600),
                       ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _snippet(text: str, query: str | None, width: int = 110,
             spans: list[tuple[int, int]] | None = None) -> output.Marked:
    """The text on one line, cut at `width`, with the matched terms to highlight: the search's
    `highlights` spans, else the query's words (by prefix)."""
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
    return output.Marked("".join(c for c, _ in chars), tuple(out))


def _what(record: dict[str, Any]) -> str:
    if record["kind"] == "episodic":
        return f"episodic/{record.get('event_type')}"
    return f"semantic/{record.get('category') or '-'}"


def _importance(record: dict[str, Any]) -> str:
    if record["kind"] == "episodic":
        return str(record.get("importance") or "-")
    confidence = record.get("confidence")
    return "-" if confidence is None else f"conf {confidence:g}"


def _emit_records(records: list[dict[str, Any]], fmt: MemoryFormat, wrapper: dict[str, Any],
                  key: str = "results") -> None:
    if fmt is MemoryFormat.json:
        output.emit_json({**wrapper, "count": len(records), key: records})
    else:
        for record in records:
            sys.stdout.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _render_hits(hits: list[Hit], fmt: MemoryFormat, query: str | None,
                 wrapper: dict[str, Any], explain: Explain | None) -> None:
    from dataclasses import asdict

    if fmt is not MemoryFormat.table:
        if explain is not None and fmt is MemoryFormat.json:
            wrapper = {**wrapper, "explain": asdict(explain)}
        _emit_records([h.to_json() for h in hits], fmt, wrapper)
        if explain is not None and fmt is MemoryFormat.jsonl:
            _print_explain(explain, to_stderr=True)
        return
    rows = []
    for hit in hits:
        ranks = " ".join(f"{k[0]}{v}" for k, v in sorted(hit.ranks.items()))
        rows.append((f"{hit.score:.4f}", ranks or "-", _age(hit.record), _what(hit.record),
                     _importance(hit.record), hit.record["id"],
                     _snippet(str(hit.record.get("summary") or hit.record.get("content") or ""),
                              query, spans=hit.highlights)))
    output.print_table(["score", "ranks", "age", "kind/type", "importance", "id", "memory"],
                       rows)
    if not hits:
        output.print_status("no memory matched", "yellow")
    if explain is not None:
        _print_explain(explain, to_stderr=False)


def _print_explain(explain: Explain, to_stderr: bool) -> None:
    lines = [f"mode: {explain.mode}"]
    if explain.provider:
        lines.append(f"provider: {explain.provider} ({explain.model})")
    lines.append(f"time: embedding {explain.embed_ms:.1f} ms, searching "
                 f"{explain.search_ms:.1f} ms")
    for path in explain.paths:
        lines.append(f"{path.kind} {path.signal}: {path.path} -> {path.rows} rows")
        lines.extend(f"    {line}" for line in path.plan)
    write = output.print_status if to_stderr else output.print_line
    for line in lines:
        write(line)


# ---------------------------------------------------------------------------------------------
# Commands


@app.command("search")
def search_cmd(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    kind: KindOpt = KindChoice.all,
    types: TypeOpt = None,
    tags: TagOpt = None,
    min_importance: MinImportanceOpt = None,
    categories: CategoryOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", min=-1.0, max=1.0,
        help="Minimum cosine similarity (semantic/hybrid).")] = None,
    min_score: Annotated[float | None, typer.Option(
        "--min-score", min=0.0, max=1.0,
        help="Minimum relevance, the same scale in every mode: the larger of the cosine "
        "similarity and the share of the query's terms a memory contains.")] = None,
    no_dedupe: Annotated[bool, typer.Option(
        "--no-dedupe", help="Show near-identical memories separately.")] = False,
    highlight: Annotated[bool, typer.Option(
        "--highlight", help="Fill `highlights` with the stemmed full-text matches in JSON too "
        "(the table always marks them; JSON otherwise lists only exact identifiers).")
    ] = False,
    mode: Annotated[ModeChoice | None, typer.Option(
        "--mode", "-m", help="semantic, keyword or hybrid (default: search.default_mode, else "
        "hybrid with an embedding provider and keyword without).")] = None,
    decay: Annotated[str | None, typer.Option(
        "--decay", metavar="HALF_LIFE", help="Rank by relevance x recency x importance: a "
        "memory HALF_LIFE old (e.g. 7d) counts half.")] = None,
    explain: ExplainOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Search memories by meaning (embeddings), by keywords (full-text), or both (hybrid,
    reciprocal rank fusion).

    Examples:

      aegisctl memory search "what did we decide about the billing retries" --since 30d --type decision

      aegisctl memory search "vacuum" --mode keyword --tag postgres --format json

      aegisctl memory search "flaky tests" --decay 7d --explain

      aegisctl memory search "SQLITE_BUSY" --min-score 0.5
    """
    from aegisctl.memory.search import SearchRequest, search
    from aegisctl.units import parse_duration

    half_life = None
    if decay is not None:
        try:
            half_life = parse_duration(decay)
        except ValueError as exc:
            raise UsageError(f"--decay: {exc}") from None
    filters = _filters(kind, types, tags, min_importance, categories, since, until)
    with _session(ctx, "search") as (app_state, settings, conn, dim):
        chosen = _format(app_state, fmt)
        # Keyword mode embeds the query only for --min-score (relevance includes similarity).
        provider = (_provider(settings, dim)
                    if mode is not ModeChoice.keyword or min_score is not None else None)
        request = SearchRequest(
            query=query, filters=filters, limit=limit or settings.search.limit,
            mode=mode.value if mode else None, threshold=threshold, min_score=min_score,
            decay_half_life=half_life, explain=explain, dedupe=not no_dedupe,
            highlight=highlight or chosen is MemoryFormat.table)
        result = search(conn, settings, request, provider, dim)
    _render_hits(result.hits, _format(app_state, fmt), query,
                 {"query": query, "mode": result.mode}, result.explain if explain else None)


@app.command("similar")
def similar_cmd(
    ctx: typer.Context,
    memory_id: Annotated[str, typer.Argument(metavar="ID", help="episodic:N or semantic:N")],
    kind: KindOpt = KindChoice.all,
    types: TypeOpt = None,
    tags: TagOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = None,
    explain: ExplainOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """The memories nearest to a stored one, by its own embedding (no provider needed).

    Examples:

      aegisctl memory similar episodic:42

      aegisctl memory similar semantic:7 --kind episodic --limit 5 --format json
    """
    from aegisctl.memory.browse import similar
    from aegisctl.memory.refs import parse_ref

    ref = parse_ref(memory_id)
    filters = _filters(kind, types, tags, None, None, since, until)
    with _session(ctx, "similar") as (app_state, settings, conn, dim):
        _, hits, plan = similar(conn, settings, ref, dim, filters,
                                limit or settings.search.limit, explain)
    _render_hits(hits, _format(app_state, fmt), None, {"id": str(ref)},
                 plan if explain else None)


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    memory_id: Annotated[str, typer.Argument(metavar="ID", help="episodic:N or semantic:N")],
    embedding: Annotated[bool, typer.Option("--embedding", help="Include the vector.")] = False,
    fmt: FormatOpt = None,
) -> None:
    """Show one memory with every column.

    Examples:

      aegisctl memory show episodic:42

      aegisctl memory show semantic:7 --format json --embedding
    """
    from aegisctl.memory.browse import get_memory
    from aegisctl.memory.refs import parse_ref

    ref = parse_ref(memory_id)
    with _session(ctx, "show") as (app_state, _, conn, _dim):
        record = get_memory(conn, ref, embedding)
    chosen = _format(app_state, fmt)
    if chosen is MemoryFormat.json:
        output.emit_json(record)
    elif chosen is MemoryFormat.jsonl:
        _emit_records([record], chosen, {})
    else:
        from rich.markup import escape

        pairs = []
        for key, value in record.items():
            if key == "embedding" and value is not None:
                value = f"[{', '.join(f'{x:.4f}' for x in value[:6])}, …] ({len(value)} dims)"
            elif isinstance(value, dict | list):
                value = json.dumps(value, ensure_ascii=False)
            pairs.append((key, escape("" if value is None else str(value))))
        output.print_fields(pairs, title=str(ref))


@app.command("recent")
def recent_cmd(
    ctx: typer.Context,
    kind: KindOpt = KindChoice.all,
    types: TypeOpt = None,
    tags: TagOpt = None,
    min_importance: MinImportanceOpt = None,
    categories: CategoryOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = None,
    fmt: FormatOpt = None,
) -> None:
    """The newest memories (episodic by timestamp, semantic by created_at).

    Examples:

      aegisctl memory recent

      aegisctl memory recent --type error --since 24h --format jsonl
    """
    from aegisctl.memory.browse import iter_memories

    filters = _filters(kind, types, tags, min_importance, categories, since, until)
    with _session(ctx, "recent") as (app_state, settings, conn, _dim):
        records = list(iter_memories(conn, filters, newest_first=True,
                                     limit=limit or settings.search.limit))
    chosen = _format(app_state, fmt)
    if chosen is not MemoryFormat.table:
        _emit_records(records, chosen, {}, key="memories")
        return
    output.print_table(
        ["age", "kind/type", "importance", "id", "memory"],
        [(_age(r), _what(r), _importance(r), r["id"],
          _snippet(str(r.get("summary") or r.get("content") or ""), None)) for r in records])


@app.command("stats")
def stats_cmd(ctx: typer.Context, fmt: FormatOpt = None) -> None:
    """Counts by kind, event type, importance and category; rows without embeddings; the
    oldest and newest memory.

    Examples:

      aegisctl memory stats

      aegisctl memory stats --format json
    """
    from aegisctl.memory.browse import memory_stats
    from aegisctl.units import format_bytes

    with _session(ctx, "stats") as (app_state, _, conn, dim):
        stats = memory_stats(conn, dim)
    chosen = _format(app_state, fmt)
    if chosen is not MemoryFormat.table:
        output.emit_json(stats.to_json()) if chosen is MemoryFormat.json else _emit_records(
            [stats.to_json()], chosen, {})
        return
    output.print_table(
        ["kind", "memories", "without embedding", "older recipe", "oldest", "newest", "size"],
        [(k, v["count"], v["without_embedding"], v["old_recipe"], v["oldest"] or "-",
          v["newest"] or "-", format_bytes(v["total_bytes"])) for k, v in stats.kinds.items()],
        title=f"memory (embedding dimension {stats.embedding_dim})")
    for kind, entry in stats.kinds.items():
        for key, counts in entry.items():
            if key.startswith("by_") and counts:
                output.print_table([key[3:], "memories"], list(counts.items()),
                                   title=f"{kind} by {key[3:]}")


@app.command("add")
def add_cmd(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The summary (episodic) or content (semantic).")],
    kind: Annotated[KindChoice, typer.Option("--kind", "-k", help="episodic or semantic.")
                    ] = KindChoice.episodic,
    event_type: Annotated[str, typer.Option("--type", help="Episodic event type.")] = "note",
    importance: Annotated[Importance, typer.Option("--importance")] = Importance.medium,
    tags: TagOpt = None,
    concept: Annotated[str | None, typer.Option(
        "--concept", help="Semantic concept (default: the first words of the text).")] = None,
    category: Annotated[str | None, typer.Option("--category", help="Semantic category.")
                        ] = None,
    source: Annotated[str | None, typer.Option("--source", help="Semantic source.")] = None,
    decision: Annotated[str | None, typer.Option("--decision", help="Episodic decision.")
                        ] = None,
    details: Annotated[str | None, typer.Option("--details", help="Episodic details as "
                                                "a JSON object.")] = None,
    fmt: FormatOpt = None,
) -> None:
    """Store one memory, embedded on insert when a provider is configured. A text that is
    already stored is not stored twice.

    Examples:

      aegisctl memory add "Capped billing retries at 3" --type decision --tag billing

      aegisctl memory add "HNSW needs ORDER BY distance LIMIT k" --kind semantic
    """
    from aegisctl.memory.ingest import add_memory

    if kind is KindChoice.all:
        raise UsageError("--kind must be episodic or semantic")
    obj: dict[str, Any] = {"kind": kind.value, "tags": list(tags or []) or None}
    if kind is KindChoice.episodic:
        obj.update(summary=text, event_type=event_type, importance=importance.value,
                   decision=decision)
        if details:
            try:
                obj["details"] = json.loads(details)
            except ValueError:
                raise UsageError("--details must be JSON") from None
    else:
        obj.update(content=text, concept=concept or " ".join(text.split()[:8])[:200],
                   category=category, source=source)
    with _session(ctx, "add") as (app_state, settings, conn, dim):
        provider = _provider(settings, dim)
        with conn.transaction():
            memory_id, inserted = add_memory(conn, obj, dim, provider)
    chosen = _format(app_state, fmt)
    payload = {"id": memory_id, "inserted": inserted, "embedded": provider is not None}
    if chosen is MemoryFormat.table:
        output.print_line(f"{'stored' if inserted else 'already stored as'} {memory_id}")
    else:
        _emit_records([payload], MemoryFormat.jsonl, {}) if chosen is MemoryFormat.jsonl \
            else output.emit_json(payload)


def _sample_lines() -> list[str]:
    """The shipped sample, its dates shifted so that its newest memory is from today."""
    from importlib.resources import files

    lines = (files("aegisctl") / "data" / "sample_memories.jsonl").read_text("utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    stamps = [dt.datetime.fromisoformat(r[c]) for r in records
              for c in ("timestamp", "created_at") if r.get(c)]
    shift = dt.datetime.now(dt.UTC) - max(stamps) if stamps else dt.timedelta(0)
    for record in records:
        for column in ("timestamp", "created_at", "updated_at"):
            if record.get(column):
                record[column] = (dt.datetime.fromisoformat(record[column]) + shift).isoformat()
    return [json.dumps(r) for r in records]


@contextmanager
def _progress(app_state: AppState, total: int | None, label: str
              ) -> Iterator[Any]:
    """A progress bar on stderr when it is a terminal; otherwise nothing."""
    if app_state.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(label, total=total)

        def advance(stage: str, n: int) -> None:
            if stage == "loading":
                bar.advance(task, n)

        yield advance


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(
        help="JSON lines file ('-' for stdin).", allow_dash=True)] = None,
    sample: Annotated[bool, typer.Option(
        "--sample", help="Import the sample memories shipped with aegisctl.")] = False,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Report bad lines and import the rest (default: a bad line rolls "
        "the whole import back).")] = False,
    fmt: FormatOpt = None,
) -> None:
    """Bulk-load memories from JSON lines: one object per line with "kind" (episodic or
    semantic) and the table's columns. Rows without an "embedding" are embedded in batches;
    texts already stored are skipped; the load uses binary COPY in one transaction.

    Examples:

      aegisctl memory import memories.jsonl

      aegisctl memory import --sample

      aegisctl memory export --since 30d | aegisctl --target replica memory import - --skip-bad
    """
    from aegisctl.memory.ingest import import_lines

    if sample == (file is not None):
        raise UsageError("give a FILE or --sample (one of them)")
    total: int | None = None
    if sample:
        lines: Any = _sample_lines()
        total = len(lines)
    elif str(file) == "-":
        lines = sys.stdin
    else:
        assert file is not None
        try:
            handle = file.open(encoding="utf-8")
            with file.open("rb") as counter:
                total = sum(1 for _ in counter)
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from None
        lines = handle
    with _session(ctx, "import") as (app_state, settings, conn, dim), \
            (lines if hasattr(lines, "close") and lines is not sys.stdin else nullcontext()):
        provider = _provider(settings, dim)
        with _progress(app_state, total, "importing") as progress, \
                app_state.connect("memory import") as lookup:
            result = import_lines(conn, lines, dim, provider, skip_bad=skip_bad,
                                  progress=progress, lookup=lookup)
    payload = {"lines": result.lines, "inserted": result.inserted,
               "duplicates": result.duplicates, "embedded": result.embedded,
               "without_embedding": result.without_embedding, "bad_lines": result.bad_lines}
    chosen = _format(app_state, fmt)
    if chosen is MemoryFormat.json:
        output.emit_json(payload)
    elif chosen is MemoryFormat.jsonl:
        _emit_records([payload], chosen, {})
    else:
        output.print_line(
            f"imported {result.total_inserted} memories ({result.inserted['episodic']} "
            f"episodic, {result.inserted['semantic']} semantic) from {result.lines} lines; "
            f"{result.duplicates} duplicates skipped; {result.embedded} embedded")
    for bad in result.bad_lines:
        output.print_status(f"line {bad['line']}: {bad['error']} (skipped)", "yellow")
    if result.without_embedding:
        output.print_status(f"{result.without_embedding} memories have no embedding (no "
                            "provider): keyword search finds them; run `aegisctl memory "
                            "reembed --missing` after configuring one", "yellow")


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    kind: KindOpt = KindChoice.all,
    types: TypeOpt = None,
    tags: TagOpt = None,
    min_importance: MinImportanceOpt = None,
    categories: CategoryOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings", help="Include each vector (so an import need not re-embed).")] = False,
    out: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file (atomically) instead of stdout.")] = None,
) -> None:
    """Write memories as JSON lines, in the format `memory import` reads; filters as in
    search.

    Examples:

      aegisctl memory export > memories.jsonl

      aegisctl memory export --kind episodic --type decision --since 90d --embeddings -o decisions.jsonl
    """
    import os
    import tempfile

    from aegisctl.memory.browse import iter_memories

    filters = _filters(kind, types, tags, min_importance, categories, since, until)
    with _session(ctx, "export") as (_, _s, conn, _dim):
        records = iter_memories(conn, filters, embedding=embeddings)
        count = 0
        if out is None:
            for record in records:
                record.pop("has_embedding", None)
                sys.stdout.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
                count += 1
            sys.stdout.flush()
        else:
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or Path("."))
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    for record in records:
                        record.pop("has_embedding", None)
                        handle.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
                        count += 1
                os.replace(tmp, out)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            output.print_status(f"exported {count} memories to {out}")


@app.command("reembed")
def reembed_cmd(
    ctx: typer.Context,
    missing: Annotated[bool, typer.Option(
        "--missing", help="Only memories without an embedding.")] = False,
    stale: Annotated[bool, typer.Option(
        "--stale", help="Memories without an embedding or embedded with an older recipe "
        "(see memory stats).")] = False,
    kind: KindOpt = KindChoice.all,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Ignore the checkpoint of an interrupted full re-embed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before re-embedding "
                                      "every memory.")] = False,
    fmt: FormatOpt = None,
) -> None:
    """Compute embeddings in batches with the configured provider: every memory (after a
    model change) or only the missing ones. Each batch commits on its own; an interrupted
    run continues where it stopped.

    Examples:

      aegisctl memory reembed --missing

      aegisctl memory reembed --stale

      aegisctl memory reembed --yes
    """
    from aegisctl.memory.reembed import count_todo, reembed
    kinds = _kinds(kind)
    with _session(ctx, "reembed") as (app_state, settings, conn, dim):
        provider = _require_provider(settings, dim)
        todo = count_todo(conn, kinds, missing, stale)
        if not missing and not stale and not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"re-embedding all {todo} memories replaces every vector: "
                                 "pass --yes (or --missing for the missing ones only)")
            typer.confirm(f"Re-embed all {todo} memories with {provider.model}?", abort=True)
        with _progress(app_state, todo, "embedding") as progress:
            result = reembed(conn, provider, kinds,
                             missing=missing, stale=stale, restart=restart,
                             progress=(lambda n: progress("loading", n)) if progress else None)
    payload = {"model": result.model, "missing_only": result.missing_only,
               "updated": result.updated, "resumed_from": result.resumed_from,
               "remaining_without_embedding": result.remaining}
    chosen = _format(app_state, fmt)
    if chosen is MemoryFormat.table:
        resumed = (f" (resumed after {', '.join(f'{k}:{v}' for k, v in result.resumed_from.items())})"
                   if result.resumed_from else "")
        output.print_line(f"embedded {result.total_updated} memories with {result.model}"
                          f"{resumed}")
    elif chosen is MemoryFormat.json:
        output.emit_json(payload)
    else:
        _emit_records([payload], chosen, {})
