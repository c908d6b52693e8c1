"""`aegisctl check`: pgvector's ANN indexes (HNSW, IVFFlat): invalid, unused, recall.

The recall check queries each index itself. Its scans land in the same cumulative statistics
the "unused" check reads, so a snapshot (`vector_scans`, kept by diagnostics.vector_scans)
keeps a tally of aegisctl's own scans per index and the "unused" check subtracts it: an index
only the recall sample ever used is still unused.
"""

from __future__ import annotations

from typing import Any

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    grade,
    register_check,
)
from aegisctl.diagnostics.snapshots import load_snapshot, save_snapshot
from aegisctl.diagnostics.vector_scans import SNAPSHOT, add_own_scans, tally_entry
from aegisctl.diagnostics.vector_scans import index_key as _key

# An ANN index on a table this small is not expected to be used yet.
UNUSED_MIN_ROWS = 1000


def _vector_indexes(ctx: CheckContext) -> list[dict[str, Any]]:
    if "vector_indexes" not in ctx.memo:
        from aegisctl.diagnostics.vectors import vector_inventory

        ctx.memo["vector_columns"], ctx.memo["vector_indexes"] = vector_inventory(
            ctx.db, ctx.loaded.settings, counts=False)
    indexes: list[dict[str, Any]] = ctx.memo["vector_indexes"]
    return [i for i in indexes if i["method"] in ("hnsw", "ivfflat")]


def _column(ctx: CheckContext, index: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in ctx.memo["vector_columns"]
                 if (c["schema"], c["table"]) == (index["schema"], index["table"])), None)


@register_check("vector_indexes_invalid", "HNSW/IVFFlat indexes that are invalid")
def vector_indexes_invalid(ctx: CheckContext) -> CheckResult:
    indexes = _vector_indexes(ctx)
    if not indexes:
        raise CheckSkipped("no HNSW or IVFFlat index")
    bad = [i for i in indexes if not i["valid"]]
    if not bad:
        return grade("vector_indexes_invalid", 0, 0, None, minimum=0,
                     message=f"{len(indexes)} vector index(es), all valid")
    parts = []
    for index in bad:
        # A failed `maint vector-index` can leave the old or the half-built index behind
        # while a valid twin serves the searches: say so, not "searches scan the table".
        twins = [i["index"] for i in indexes if i["valid"] and i is not index and
                 (i["schema"], i["table"], i["column"], i["opclass"]) ==
                 (index["schema"], index["table"], index["column"], index["opclass"])]
        if twins:
            parts.append(f"{_key(index)} (left by an interrupted rebuild; {twins[0]} serves the "
                         f"searches: DROP INDEX CONCURRENTLY {_key(index)})")
        else:
            parts.append(f"{_key(index)} (searches on {index['table']}.{index['column']} scan "
                         "the table: aegisctl maint vector-index, or REINDEX INDEX CONCURRENTLY)")
    return grade("vector_indexes_invalid", len(bad), 0, None, minimum=0,
                 message="invalid: " + "; ".join(parts))


def _own_tally(ctx: CheckContext) -> dict[str, dict[str, int]]:
    if "vector_own" not in ctx.memo:
        saved = load_snapshot(ctx, SNAPSHOT) or {}
        ctx.memo["vector_own"] = {
            _key(index): tally_entry(saved, _key(index), int(index["scans"] or 0),
                                     int((_column(ctx, index) or {}).get("table_seq_scans") or 0))
            for index in _vector_indexes(ctx)}
    own: dict[str, dict[str, int]] = ctx.memo["vector_own"]
    return own


@register_check("vector_indexes_unused", "HNSW/IVFFlat indexes never scanned while their table "
                "is scanned sequentially (aegisctl's own recall queries not counted)")
def vector_indexes_unused(ctx: CheckContext) -> CheckResult:
    indexes = _vector_indexes(ctx)
    if not indexes:
        raise CheckSkipped("no HNSW or IVFFlat index")
    own = _own_tally(ctx)
    unused = []
    for index in indexes:
        column = _column(ctx, index)
        if column is None or not index["valid"] or (column["rows"] or 0) < UNUSED_MIN_ROWS:
            continue
        mine = own[_key(index)]
        index_scans = int(index["scans"] or 0) - mine["own_idx"]
        seq_scans = int(column["table_seq_scans"] or 0) - mine["own_seq"]
        if index_scans == 0 and seq_scans > 0:
            unused.append(_key(index))
    message = "every vector index on a table of some size has been used" if not unused else \
        f"never used while the table is scanned: {', '.join(unused)} (operator vs operator " \
        "class? see `aegisctl diag vectors`)"
    return grade("vector_indexes_unused", len(unused), 0, None, minimum=0, message=message)


@register_check("vector_recall", "lowest recall@10 of the ANN indexes (sampled stored vectors)")
def vector_recall(ctx: CheckContext) -> CheckResult:
    from aegisctl.diagnostics.advice import vector_schema
    from aegisctl.diagnostics.vectors import RECALL_K, measure_recall

    t = ctx.settings.vector_recall
    if t.sample == 0:
        raise CheckSkipped("checks.vector_recall.sample is 0")
    indexes = [i for i in _vector_indexes(ctx) if i["valid"]]
    schema = vector_schema(ctx.db)
    own = _own_tally(ctx)
    measured = []
    too_big = []
    try:
        for index in indexes:
            column = _column(ctx, index)
            if column is None or (column["rows"] or 0) <= RECALL_K:
                continue
            if column["rows"] > t.max_rows:
                too_big.append(_key(index))
                continue
            assert schema is not None
            found = measure_recall(ctx.db, schema, index, t.sample,
                                   ctx.loaded.settings.search.ef_search)
            add_own_scans(own[_key(index)], found)
            if found.get("recall") is not None:
                measured.append((found["recall"], _key(index)))
    finally:
        save_snapshot(ctx, SNAPSHOT, own)
    unmeasured = f"; not measured (over checks.vector_recall.max_rows = {t.max_rows} rows): " \
        f"{', '.join(too_big)}" if too_big else ""
    if not measured:
        raise CheckSkipped(f"no valid ANN index on a table with {RECALL_K + 1} to {t.max_rows} "
                           f"rows{unmeasured}")
    recall, name = min(measured)
    return grade("vector_recall", recall, t.warning, t.critical, lower_is_worse=True,
                 minimum=0, maximum=1,
                 message=f"lowest recall@{RECALL_K}: {recall:.2f} on {name} ({len(measured)} "
                         f"index(es), {t.sample} queries each, ef_search "
                         f"{ctx.loaded.settings.search.ef_search}){unmeasured}")


def _fix_hint(served: str, best_mode: str | None, best: float | None,
              iterative: bool = True) -> str:
    if not iterative:
        return ("pgvector is older than 0.8, without iterative scans: upgrade it (ALTER "
                "EXTENSION vector UPDATE after the package), or raise hnsw.ef_search "
                "(`aegisctl maint vector-index --tune`)")
    if best_mode and best_mode != served and best is not None:
        return (f"with hnsw.iterative_scan = {best_mode}: {best:.2f}; fix: `aegisctl maint "
                f"vector-index --tune --yes` (or ALTER DATABASE ... SET hnsw.iterative_scan = "
                f"{best_mode}, or the agent sets it per query)")
    return ("iterative scans do not fix it: raise hnsw.ef_search / hnsw.max_scan_tuples "
            "(`aegisctl maint vector-index --tune`), or search this filter exactly (aegisctl's "
            "search does below search.exact_below matching rows)")


@register_check("vector_recall_filtered", "lowest HNSW recall@10 under the configured filter "
                "shapes (checks.vector_recall.filters), at the database's hnsw settings")
def vector_recall_filtered(ctx: CheckContext) -> CheckResult:
    from aegisctl.diagnostics.advice import vector_schema
    from aegisctl.diagnostics.filtered_recall import (
        MODES,
        build_cases,
        database_hnsw_settings,
        hnsw_indexes,
        prepare_case,
        run_case,
    )
    from aegisctl.memory.search.pg import pgvector_version

    t = ctx.settings.vector_recall
    if not t.filters:
        raise CheckSkipped("no filter shapes configured (checks.vector_recall.filters)")
    if t.sample == 0:
        raise CheckSkipped("checks.vector_recall.sample is 0")
    schema = vector_schema(ctx.db)
    indexes = [i for i in hnsw_indexes(_vector_indexes(ctx))
               if ((_column(ctx, i) or {}).get("rows") or 0) <= t.max_rows]
    cases = build_cases(indexes, t.filters)
    if schema is None or not cases:
        raise CheckSkipped("no valid HNSW index on a memory table the filter shapes apply to "
                           f"(with at most checks.vector_recall.max_rows = {t.max_rows} rows)")
    served = database_hnsw_settings(ctx.db)
    ef_search = int(served["ef_search"] or 40)
    iterative = pgvector_version(ctx.db) >= (0, 8)
    served_mode = (served["iterative_scan"] or "off") if iterative else "off"
    own = _own_tally(ctx)
    rows: list[tuple[float, str, str]] = []
    unmatched: list[str] = []
    try:
        for case in cases:
            prepare_case(ctx.db, schema, case, t.sample)
            if not any(case.exact):
                if case.vectors:  # (a table with no vectors is no shape's fault)
                    unmatched.append(case.label)
                continue
            measured = {mode: run_case(ctx.db, schema, case, ef_search, mode, None, iterative)
                        for mode in (MODES if iterative else ("off",))}
            here = measured[served_mode]
            if here.recall is None:
                continue
            text = (f"{case.label} ({case.matching_rows} matching rows): recall "
                    f"{here.recall:.2f}, {here.short_share:.0%} of results short")
            if here.recall < t.warning:
                best_mode, best = max(((m, r.recall) for m, r in measured.items()
                                       if r.recall is not None), key=lambda x: x[1])
                text += "; " + _fix_hint(served_mode, best_mode, best, iterative)
            if case.plan_uses_index is False:
                text += "; the planner did not use the HNSW index under this filter"
            rows.append((here.recall, case.label, text))
    finally:
        for case in cases:
            add_own_scans(own[_key(case.index)], {"own_index_scans": case.own_index_scans,
                                                  "own_seq_scans": case.own_seq_scans})
        save_snapshot(ctx, SNAPSHOT, own)
    if not rows:
        raise CheckSkipped("no filter shape matches any stored memory")
    rows.sort()
    flagged = [text for recall, _, text in rows if recall < t.warning]
    setting = (f"hnsw.ef_search {ef_search}, hnsw.iterative_scan {served_mode} (the database's "
               f"settings), {t.sample} queries per shape")
    if flagged:
        message = f"below {t.warning:g}: " + " | ".join(flagged) + f" [{setting}]"
    else:
        message = f"lowest: {rows[0][2]} ({len(rows)} shape(s); {setting})"
    if unmatched:
        # Often a typo'd tag or context value: such a shape is never measured.
        message += f"; no row matches (not measured): {', '.join(unmatched)}"
    return grade("vector_recall_filtered", rows[0][0], t.warning, t.critical,
                 lower_is_worse=True, minimum=0, maximum=1, message=message)
