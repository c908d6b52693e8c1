"""aegisctl diag: one diagnostic topic at a time (the SQL lives in sql/diagnostics/<topic>.sql)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, state
from aegisctl.cli.options import limit_option

if TYPE_CHECKING:
    from aegisctl.diagnostics.topics import DiagOptions

app = typer.Typer(
    help=(
        "Diagnostics for a DBA: sessions, locks, sizes, cache, indexes, slow statements, vacuum, "
        "replication, pgvector columns and indexes, settings. Read-only; each topic is one "
        "SQL file in sql/diagnostics/. A query this user may not run is reported in one line "
        "and the rest still runs.\n\n"
        "Example: aegisctl diag locks --format json"
    ),
    no_args_is_help=True,
    add_completion=False,
)

LimitOption = Annotated[int, limit_option("Rows per list (largest first).")]


def _run(ctx: typer.Context, topic: str, fmt: FormatOption, options: DiagOptions) -> None:
    from aegisctl.diagnostics.catalog import run_topic

    app_state = state(ctx)
    settings = app_state.config().settings
    target = app_state.target(reads=True)
    with app_state.connect(f"diag {topic}", reads=True) as conn:
        result = run_topic(conn, topic, target.name, settings, options)
    output.render(result, app_state.fmt(fmt))


def _options(**kwargs: object) -> DiagOptions:
    from aegisctl.diagnostics.topics import DiagOptions

    return DiagOptions(**kwargs)  # type: ignore[arg-type]


@app.command("activity")
def activity(
    ctx: typer.Context, fmt: FormatOption = None,
    min_duration: Annotated[str | None, typer.Option(
        "--min-duration", help="List statements running at least this long (default: "
        "checks.slow_query_seconds.warning, 5s).")] = None,
) -> None:
    """Connections vs max_connections, long statements, idle in transaction, lock waits.

    Connections by state against max_connections, statements running longer than
    --min-duration, sessions idle in a transaction, and sessions waiting for a lock.

    Example: aegisctl diag activity --min-duration 30s
    """
    from aegisctl.errors import UsageError
    from aegisctl.units import parse_duration

    seconds = None
    if min_duration is not None:
        try:
            seconds = parse_duration(min_duration)
        except ValueError as exc:
            raise UsageError(f"--min-duration: {exc}") from None
    _run(ctx, "activity", fmt, _options(min_seconds=seconds))


@app.command("locks")
def locks(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Blocking chains: who blocks whom, for how long, running what.

    `root` marks the blocker at the head of a chain: the session to look at first.

    Example: aegisctl diag locks
    """
    _run(ctx, "locks", fmt, _options())


@app.command("size")
def size(ctx: typer.Context, fmt: FormatOption = None, limit: LimitOption = 20) -> None:
    """Database size and the largest tables (heap, indexes, TOAST).

    The size is compared with checks.database_size_pct.allocated when that is set.

    Example: aegisctl diag size --limit 5
    """
    _run(ctx, "size", fmt, _options(limit=limit))


@app.command("cache")
def cache(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Heap and index cache hit ratios, and the tables reading most from disk.

    Ratios are since the statistics reset; an idle new database says little.

    Example: aegisctl diag cache
    """
    _run(ctx, "cache", fmt, _options())


@app.command("indexes")
def indexes(ctx: typer.Context, fmt: FormatOption = None, limit: LimitOption = 20) -> None:
    """Index usage; unused, duplicate and invalid indexes with their sizes.

    A duplicate is the same index twice, or a btree index that is a leading prefix of another.

    Example: aegisctl diag indexes --format json
    """
    _run(ctx, "indexes", fmt, _options(limit=limit))


@app.command("slow")
def slow(ctx: typer.Context, fmt: FormatOption = None, limit: LimitOption = 10) -> None:
    """Top statements by mean and total time, from pg_stat_statements.

    Says how to enable pg_stat_statements when it is missing.

    Example: aegisctl diag slow --limit 5
    """
    _run(ctx, "slow", fmt, _options(limit=limit))


@app.command("vacuum")
def vacuum(ctx: typer.Context, fmt: FormatOption = None, limit: LimitOption = 20) -> None:
    """Dead tuples, last (auto)vacuum and analyze, transaction-ID wraparound age.

    Per table, and the transaction-ID age of every database and of the oldest tables.

    Example: aegisctl diag vacuum
    """
    _run(ctx, "vacuum", fmt, _options(limit=limit))


@app.command("replication")
def replication(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Role, replicas and their lag, WAL receiver, slots and retained WAL.

    On a primary its replicas with write/flush/replay lag; on a standby what it receives and
    how far replay is behind; replication slots and the WAL they retain.

    Example: aegisctl --target replica diag replication
    """
    _run(ctx, "replication", fmt, _options())


@app.command("vectors")
def vectors(
    ctx: typer.Context, fmt: FormatOption = None,
    recall_sample: Annotated[int, typer.Option(
        "--recall-sample", help="Also measure recall: approximate vs exact top-10 for N stored "
        "vectors per HNSW/IVFFlat index (0: off).", min=0)] = 0,
) -> None:
    """pgvector columns and their indexes in every schema, optionally with recall.

    Every vector, halfvec and sparsevec column in every schema: rows, rows missing an
    embedding, zero and duplicate embeddings, dead tuples, sequential scans; and each index on
    them (expression indexes included) with its method, parameters (m, ef_construction, lists),
    size against maintenance_work_mem, validity and scans.

    Example: aegisctl diag vectors --recall-sample 20
    """
    _run(ctx, "vectors", fmt, _options(recall_sample=recall_sample))


@app.command("explain-search")
def explain_search(
    ctx: typer.Context, fmt: FormatOption = None,
    table: Annotated[str | None, typer.Option(
        "--table", help="Table to search, as schema.table or table (default: "
        "episodic_memory, else the first table with a vector column).")] = None,
    column: Annotated[str | None, typer.Option("--column", help="Its vector column.")] = None,
) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) a nearest-neighbour search: is the ANN index used?

    A stored embedding is the query; search.ef_search and search.limit come from the config.

    Example: aegisctl diag explain-search --table public.semantic_memory
    """
    _run(ctx, "explain-search", fmt, _options(table=table, column=column))


@app.command("settings")
def settings_cmd(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Settings that matter for this workload, with advice.

    shared_buffers, work_mem, maintenance_work_mem, max_parallel_maintenance_workers,
    hnsw.ef_search, autovacuum and more: the current value and a note where it is far from the
    usual advice.

    Example: aegisctl diag settings
    """
    _run(ctx, "settings", fmt, _options())
