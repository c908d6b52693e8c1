"""aegisctl memory: search, similar, show, recent, stats, add, import, export, reembed."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli.context import AppState, OutputFormat, state
from aegisctl.cli.options import (
    BeforeOpt,
    CategoryOpt,
    ContextOpt,
    Importance,
    KindChoice,
    KindOpt,
    MinImportanceOpt,
    SinceOpt,
    SourceOpt,
    TagOpt,
    TypeOpt,
    UntilOpt,
    WaitLock,
    asks,
    dry_run_option,
    limit_option,
    memory_filters,
    unless_dry_run,
    yes_option,
)
from aegisctl.cli.options import kinds as option_kinds
from aegisctl.errors import UsageError

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings
    from aegisctl.memory.providers import EmbeddingProvider

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


class ModeChoice(StrEnum):
    semantic = "semantic"
    keyword = "keyword"
    hybrid = "hybrid"


FormatOpt = Annotated[
    MemoryFormat | None,
    typer.Option("--format", "-f", help="table, json or jsonl (default: table on a terminal, "
                 "JSON lines when stdout is piped)."),
]
LimitOpt = Annotated[int | None, limit_option("How many results (default: search.limit).",
                                              max=1000)]
ExplainOpt = Annotated[bool, typer.Option(
    "--explain", help="Say which path each search took, the query plans, and the time spent "
    "embedding vs searching.")]


def _format(app_state: AppState, requested: MemoryFormat | None) -> MemoryFormat:
    if requested is not None:
        return requested
    if app_state.format is not None:  # an explicit global --format
        return MemoryFormat(app_state.format.value)
    return MemoryFormat.table if sys.stdout.isatty() else MemoryFormat.jsonl


_READ_ONLY = frozenset({"search", "similar", "show", "recent", "stats", "export"})

MinScoreOpt = Annotated[float | None, typer.Option(
    "--min-score", min=0.0, max=1.0,
    help="Minimum relevance, the same scale in every mode: the larger of the cosine "
    "similarity and the share of the query's terms a memory contains.")]


@contextmanager
def _session(ctx: typer.Context, command: str
             ) -> Iterator[tuple[AppState, Settings, psycopg.Connection[Any], int]]:
    from aegisctl.memory.browse import require_schema

    app_state = state(ctx)
    settings = app_state.config().settings
    # Commands that only read may use a cluster's streaming replica.
    reads = command in _READ_ONLY
    with app_state.connect(f"memory {command}", reads=reads) as conn:
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
# Rendering: every result goes through output.render (table, json) or, for jsonl, one JSON
# line per record.


def _show(result: Any, fmt: MemoryFormat) -> None:
    if fmt is MemoryFormat.jsonl:
        output.emit_json_lines(result.records() if hasattr(result, "records")
                               else [result.to_json()])
    else:
        output.render(result, fmt.value)


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
    sources: SourceOpt = None,
    context: ContextOpt = None,
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
    no_rerank: Annotated[bool, typer.Option(
        "--no-rerank", help="Skip the configured rerank model (search.rerank) for this "
        "search.")] = False,
    explain: ExplainOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Search memories by meaning (embeddings), by keywords (full-text), or both (hybrid:
    reciprocal rank fusion whose weights follow how strong each signal is for the query; the
    first hit of the signal that is sure of itself keeps a place in the top 2 (the safeguard,
    search.safeguard); then the optional rerank model of search.rerank). --explain shows the
    weights and what the safeguard did.

    Examples:

      aegisctl memory search "what did we decide about the billing retries" --since 30d --type decision

      aegisctl memory search "vacuum" --mode keyword --tag postgres --format json

      aegisctl memory search "flaky tests" --decay 7d --explain

      aegisctl memory search "SQLITE_BUSY" --min-score 0.5
    """
    from aegisctl.memory.search import SearchRequest, search
    from aegisctl.memory.views import HitList, explain_lines
    from aegisctl.units import parse_duration

    if not query.strip():
        raise UsageError("the search query is empty: give the words to look for",
                         hint='e.g. aegisctl memory search "billing retries"')

    half_life = None
    if decay is not None:
        try:
            half_life = parse_duration(decay)
        except ValueError as exc:
            raise UsageError(f"--decay: {exc}") from None
    filters = memory_filters(kind, types, tags, min_importance, categories, since, until,
                             sources=sources, context=context)
    with _session(ctx, "search") as (app_state, settings, conn, dim):
        chosen = _format(app_state, fmt)
        # Keyword mode embeds the query only for --min-score (relevance includes similarity).
        provider = (_provider(settings, dim)
                    if mode is not ModeChoice.keyword or min_score is not None else None)
        request = SearchRequest(
            query=query, filters=filters, limit=limit or settings.search.limit,
            mode=mode.value if mode else None, threshold=threshold, min_score=min_score,
            decay_half_life=half_life, explain=explain, dedupe=not no_dedupe,
            highlight=highlight or chosen is MemoryFormat.table, rerank=not no_rerank)
        result = search(conn, settings, request, provider, dim)
    view = HitList(result.hits, {"query": query, "mode": result.mode},
                   result.explain if explain else None)
    _show(view, chosen)
    if explain and chosen is MemoryFormat.jsonl:
        for line in explain_lines(result.explain):
            output.print_status(line)


class EvalMode(StrEnum):
    keyword = "keyword"
    semantic = "semantic"
    hybrid = "hybrid"
    hybrid_rerank = "hybrid+rerank"


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(
        help="JSON lines: {\"question\": ..., \"relevant\": [memory ids]} and/or "
        "\"sources\": [semantic memory sources]; optional \"kind\".")],
    modes: Annotated[list[EvalMode] | None, typer.Option(
        "--mode", "-m", help="Repeatable (default: every mode available here: keyword; "
        "semantic and hybrid with an embedding provider; hybrid+rerank with search.rerank).")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=10,
                                   help="The k of success@k (MRR and nDCG are @10).")] = 5,
    save_baseline: Annotated[bool, typer.Option(
        "--save-baseline", help="Keep these figures in the database: `memory reembed` "
        "compares memory.reembed_eval against them.")] = False,
    fmt: FormatOpt = None,
) -> None:
    """Measure search quality on your own memory: run a labelled question file against the
    database and print success@k, MRR@10 and nDCG@10 per search mode, so a model, recipe or
    setting change can be checked before and after. Reads only.

    Examples:

      aegisctl memory eval questions.jsonl

      aegisctl memory eval questions.jsonl --mode semantic --mode hybrid -k 3

      aegisctl memory eval questions.jsonl --format json > before.json

      aegisctl memory eval questions.jsonl --save-baseline   # before a model change

    A line of the file:

      {"question": "how do we retry failed charges", "relevant": ["episodic:12"]}
    """
    from aegisctl.memory.evaluate import load_questions, run_eval
    from aegisctl.memory.evaluate import save_baseline as keep

    questions = load_questions(file)
    with _session(ctx, "eval") as (app_state, settings, conn, dim):
        chosen = _format(app_state, fmt)
        needs_vectors = modes is None or any(m is not EvalMode.keyword for m in modes)
        provider = _provider(settings, dim) if needs_vectors else None
        result = run_eval(conn, settings, provider, dim, questions, str(file),
                          [m.value for m in modes] if modes else None, k)
        if save_baseline:
            keep(conn, result)
            output.print_status("baseline saved: memory reembed compares memory.reembed_eval "
                                "with these figures")
    _show(result, MemoryFormat.table if chosen is MemoryFormat.table else MemoryFormat.json)


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
    from aegisctl.memory.views import HitList

    ref = parse_ref(memory_id)
    filters = memory_filters(kind, types, tags, None, None, since, until)
    with _session(ctx, "similar") as (app_state, settings, conn, dim):
        _, hits, plan = similar(conn, settings, ref, dim, filters,
                                limit or settings.search.limit, explain)
    _show(HitList(hits, {"id": str(ref)}, plan if explain else None),
          _format(app_state, fmt))


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
    from aegisctl.memory.views import MemoryRecord

    ref = parse_ref(memory_id)
    with _session(ctx, "show") as (app_state, _, conn, _dim):
        record = get_memory(conn, ref, embedding)
    _show(MemoryRecord(record), _format(app_state, fmt))


@app.command("recent")
def recent_cmd(
    ctx: typer.Context,
    kind: KindOpt = KindChoice.all,
    types: TypeOpt = None,
    tags: TagOpt = None,
    min_importance: MinImportanceOpt = None,
    categories: CategoryOpt = None,
    sources: SourceOpt = None,
    context: ContextOpt = None,
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
    from aegisctl.memory.views import MemoryList

    filters = memory_filters(kind, types, tags, min_importance, categories, since, until,
                             sources=sources, context=context)
    with _session(ctx, "recent") as (app_state, settings, conn, _dim):
        records = list(iter_memories(conn, filters, newest_first=True,
                                     limit=limit or settings.search.limit))
    _show(MemoryList(records), _format(app_state, fmt))


@app.command("stats")
def stats_cmd(ctx: typer.Context, fmt: FormatOpt = None) -> None:
    """Counts by kind, event type, importance and category; rows without embeddings; the
    oldest and newest memory.

    Examples:

      aegisctl memory stats

      aegisctl memory stats --format json
    """
    from aegisctl.memory.browse import memory_stats

    with _session(ctx, "stats") as (app_state, _, conn, dim):
        stats = memory_stats(conn, dim)
    _show(stats, _format(app_state, fmt))


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
        result = add_memory(conn, obj, dim, _provider(settings, dim))
    _show(result, _format(app_state, fmt))


def _sample_bytes() -> bytes:
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
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _progress(app_state: AppState) -> AbstractContextManager[Any]:
    """Progress bars with rate and ETA on a terminal; otherwise nothing. The callback takes
    (stage, done, total)."""
    from aegisctl.cli.progress import bars

    return bars(app_state)


# Lines of embeddings are ~16 kB: with the default 8 kB buffer each takes several reads.
READ_BUFFER = 1024 * 1024


def _stdin_reader() -> Any:
    """Standard input with a large buffer (itself when it has no file descriptor)."""
    import io

    try:
        return open(sys.stdin.fileno(), "rb", buffering=READ_BUFFER, closefd=False)
    except (OSError, ValueError, io.UnsupportedOperation):
        return sys.stdin.buffer


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(
        help="JSON lines file ('-' for stdin).", allow_dash=True)] = None,
    sample: Annotated[bool, typer.Option(
        "--sample", help="Import the sample memories shipped with aegisctl.")] = False,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Report bad lines and import the others (default: any bad line "
        "and nothing is imported). Exits 1 when every line is bad.")] = False,
    fmt: FormatOpt = None,
) -> None:
    """Bulk-load memories from JSON lines: one object per line with "kind" (episodic or
    semantic) and the table's columns.

    The whole file is checked first (bad lines reported by number; lines longer than
    memory.max_line_bytes or not UTF-8 are bad lines). Then rows are embedded (when they carry
    no "embedding") and written in batches, each committed on its own, while the next batch is
    being embedded. Texts already stored are skipped, so an interrupted import continues
    where it stopped when the same command is run again.

    Examples:

      aegisctl memory import memories.jsonl

      aegisctl memory import --sample

      aegisctl memory export --since 30d | aegisctl --target replica memory import - --skip-bad
    """
    from aegisctl.memory.ingest import import_stream

    if sample == (file is not None):
        raise UsageError("give a FILE or --sample (one of them)")
    if sample:
        import io

        stream: Any = io.BytesIO(_sample_bytes())
    elif str(file) == "-":
        stream = _stdin_reader()
    else:
        assert file is not None
        try:
            stream = file.open("rb", buffering=READ_BUFFER)
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from None
    from aegisctl.memory.ingest import WRITERS

    with _session(ctx, "import") as (app_state, settings, conn, dim), \
            (stream if stream is not sys.stdin.buffer else nullcontext()), ExitStack() as more:
        lookup = more.enter_context(app_state.connect("memory import"))
        writers = [conn, *(more.enter_context(app_state.connect("memory import"))
                           for _ in range(WRITERS - 1))]
        progress = more.enter_context(_progress(app_state))
        result = import_stream(writers, lookup, stream, dim, _provider(settings, dim),
                               max_line_bytes=settings.memory.max_line_bytes,
                               skip_bad=skip_bad, progress=progress)
    _show(result, _format(app_state, fmt))
    for warning in result.warnings():
        output.warn(warning)


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    json = "json"


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    kind: KindOpt = KindChoice.all,
    types: TypeOpt = None,
    tags: TagOpt = None,
    min_importance: MinImportanceOpt = None,
    categories: CategoryOpt = None,
    sources: SourceOpt = None,
    context: ContextOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    before: BeforeOpt = None,
    ids: Annotated[list[str] | None, typer.Option(
        "--id", metavar="ID", help="Only this memory (episodic:N or semantic:N; "
        "repeatable).")] = None,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings", help="Include each vector (so an import need not re-embed).")] = False,
    out: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file (atomically) instead of stdout.")] = None,
    fmt: Annotated[ExportFormat | None, typer.Option(
        "--format", "-f", help="jsonl (default: what memory import reads) or json (one "
        "document: {\"memories\": [...], \"count\": N}).")] = None,
) -> None:
    """Write memories as JSON lines, in the format `memory import` reads; filters as in
    search (and as `memory forget` takes them: run the same filters through export first to
    answer an access request, or to keep what you are about to forget). With --output, the
    file is written to a temporary name and renamed when complete, and a summary goes to
    stderr (or stdout with --format json).

    Examples:

      aegisctl memory export > memories.jsonl

      aegisctl memory export --context user=alice -o alice.jsonl

      aegisctl memory export --kind episodic --type decision --since 90d --embeddings -o decisions.jsonl

      aegisctl memory export --format json | jq '.count'
    """
    from aegisctl.memory.browse import export_memories
    from aegisctl.memory.views import ExportResult

    app_state = state(ctx)
    chosen = fmt or (ExportFormat.json if app_state.format is OutputFormat.json
                     else ExportFormat.jsonl)
    from aegisctl.memory.refs import parse_ref

    filters = memory_filters(kind, types, tags, min_importance, categories, since, until,
                             sources=sources, context=context, before=before)
    filters.ids = [parse_ref(i) for i in ids or []]
    with _session(ctx, "export") as (_, _s, conn, _dim):
        if out is None:
            export_memories(conn, filters, embeddings, None, chosen.value)
            return
        result = ExportResult(path=str(out))
        result.count = export_memories(conn, filters, embeddings, out, chosen.value)
    if chosen is ExportFormat.json and fmt is None:
        output.render(result, "json")
    else:
        output.print_status(f"exported {result.count} memories to {out}")


@app.command("forget")
@asks(unless_dry_run)
def forget_cmd(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, typer.Argument(
        metavar="[ID]...", help="Memories to forget: episodic:N or semantic:N.")] = None,
    kind: KindOpt = KindChoice.all,
    types: TypeOpt = None,
    tags: TagOpt = None,
    min_importance: MinImportanceOpt = None,
    categories: CategoryOpt = None,
    sources: SourceOpt = None,
    context: ContextOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    before: BeforeOpt = None,
    query: Annotated[str | None, typer.Option(
        "--query", "-q", help="Forget the hits of this search (needs --min-score; the filters "
        "narrow it as in memory search).")] = None,
    min_score: MinScoreOpt = None,
    everything: Annotated[bool, typer.Option(
        "--all", help="Every memory of --kind (all, episodic or semantic): needed when no id, "
        "filter or --query narrows the choice.")] = False,
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why (kept in the erasure ledger; needed unless --dry-run), e.g. "
        "\"GDPR request 2026-117\".")] = None,
    dry_run: Annotated[bool, dry_run_option(
        "List what would be forgotten; delete nothing.")] = False,
    yes: Annotated[bool, yes_option("Do not ask before deleting.")] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOpt = None,
) -> None:
    """Forget memories for good: delete them (in batches, like cleanup), record each one in
    the erasure ledger (its id and the SHA-256 of its text, never the text; when, why, the OS
    and database user), and copy the ledger beside the backups and to backup.remote. Every
    later restore (backup restore, verify --restore-test, the physical restore and drill)
    deletes them again, so a forgotten memory never comes back from a backup that still
    holds it (`check` reports such backups once they outlive the erasure horizon).

    Choose the memories by id, with the filters of memory search, or with a search
    (--query and --min-score). Run it with --dry-run first; `memory export` with the same
    filters writes what would go.

    Examples:

      aegisctl memory forget episodic:42 semantic:7 --reason "user request 117" --yes

      aegisctl memory forget --context user=alice --dry-run

      aegisctl memory forget --source crm-import --before 2025-01-01 --reason "retention" --yes

      aegisctl memory forget --query "alice's phone number" --min-score 0.6 --dry-run
    """
    from aegisctl.cli.context import confirm
    from aegisctl.locks import target_lock
    from aegisctl.memory.forget import ForgetResult, Selection, forget, select
    from aegisctl.memory.refs import parse_ref

    filters = memory_filters(kind, types, tags, min_importance, categories, since, until,
                             sources=sources, context=context, before=before)
    filters.ids = [parse_ref(i) for i in ids or []]
    selection = Selection(filters, query, min_score, everything=everything)
    selection.check()
    if not dry_run and not (reason or "").strip():
        raise UsageError("--reason is needed: the erasure ledger records why memories were "
                         "forgotten", hint='e.g. --reason "user request 117"')
    with _session(ctx, "forget") as (app_state, settings, conn, dim):
        chosen_fmt = _format(app_state, fmt)
        target = app_state.target()
        provider = _provider(settings, dim) if query is not None else None
        chosen, missing = select(conn, settings, selection, provider, dim)
        plan = ForgetResult(True, target.name, chosen, reason, not_found=missing)
        if dry_run or not chosen:
            _show(plan, chosen_fmt)
            if not chosen and not dry_run:
                output.print_status("nothing matches: nothing was deleted")
            return
        output.print_status(f"forget {plan.statement()}: deleted in batches, recorded in the "
                            "erasure ledger (ids and content hashes) and deleted again by every "
                            "restore of an older backup")
        confirm(f"Forget {plan.statement()}?", yes)
        with target_lock(settings, target.name, "memory forget", wait_lock):
            result = forget(conn, settings, target.name, chosen, str(reason).strip())
        result.not_found = missing
    _show(result, chosen_fmt)
    if result.published:
        for problem in result.published.problems:
            output.warn(problem)


@app.command("reembed")
@asks(lambda p: not (p.get("missing") or p.get("stale") or p.get("dry_run")))
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
    dry_run: Annotated[bool, dry_run_option("Say how many memories would be embedded, and with which model; "
        "change nothing.")] = False,
    yes: Annotated[bool, yes_option("Do not ask before re-embedding "
                                      "every memory.")] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOpt = None,
) -> None:
    """Compute embeddings in batches with the configured provider: every memory (after a
    model change), only the missing ones, or (--stale) the missing ones and those embedded
    with an older embedding recipe. Each batch commits on its own; an interrupted run
    continues where it stopped.

    Examples:

      aegisctl memory reembed --missing

      aegisctl memory reembed --stale

      aegisctl memory reembed --dry-run

      aegisctl memory reembed --yes

    With memory.reembed_eval configured, the question file runs after re-embedding and the
    command fails (exit 1) when the chosen metric fell more than max_drop below the baseline
    saved by `memory eval FILE --save-baseline`.
    """
    from aegisctl.cli.context import confirm
    from aegisctl.errors import OperationFailed
    from aegisctl.locks import target_lock
    from aegisctl.memory.evaluate import gate_after_reembed, load_questions
    from aegisctl.memory.reembed import ReembedPlan, count_todo, reembed

    kinds = option_kinds(kind)
    with _session(ctx, "reembed") as (app_state, settings, conn, dim):
        gate = settings.memory.reembed_eval
        # The question file is checked before anything changes.
        questions = load_questions(Path(gate.file)) if gate and not dry_run else None
        provider = _require_provider(settings, dim)
        todo = count_todo(conn, kinds, missing, stale)
        if dry_run:
            _show(ReembedPlan(provider.model, missing, todo, stale), _format(app_state, fmt))
            return
        if not missing and not stale:
            confirm(f"Re-embed all {todo} memories with {provider.model}? Every stored vector "
                    "is replaced", yes)
        target = app_state.target()
        with target_lock(settings, target.name, "memory reembed", wait_lock), \
                _progress(app_state) as progress:
            done = [0]

            def advance(n: int) -> None:
                done[0] += n
                if progress:
                    progress("embedding", done[0], todo)

            result = reembed(conn, provider, kinds, missing=missing, stale=stale,
                             restart=restart, progress=advance)
        outcome = gate_after_reembed(conn, settings, provider, dim, questions) \
            if questions else None
    _show(result, _format(app_state, fmt))
    if outcome is not None:
        output.print_status(outcome.line())
        if not outcome.passed:
            raise OperationFailed(
                f"search quality fell after re-embedding: {outcome.metric} ({outcome.mode}) on "
                f"{gate.file if gate else ''} is {outcome.value:.3f}, more than "
                f"memory.reembed_eval.max_drop {outcome.max_drop:g} below the baseline "
                f"{outcome.baseline:.3f}",
                hint="the new vectors are stored: re-embed with the previous model, or accept "
                     "them with `memory eval FILE --save-baseline`")
