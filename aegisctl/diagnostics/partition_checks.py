"""`aegisctl check`: tables partitioned by month keep partitions ahead of the clock, and their
DEFAULT partition stays empty (rows there mean a month had no partition)."""

from __future__ import annotations

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    grade,
    register_check,
)


def _tables(ctx: CheckContext) -> list[object]:
    from aegisctl.maintenance.partitions import partitioned_tables, table_report

    if "partitions" not in ctx.memo:
        specs = ctx.loaded.settings.partitions
        configured = {(s.schema, s.table_name(entry)): s for entry, s in specs.items()}
        ctx.memo["partitions"] = [
            table_report(ctx.db, parent, key, configured.get((parent.schema, parent.name)))
            for parent, key in partitioned_tables(ctx.db)]
    found: list[object] = ctx.memo["partitions"]
    if not found:
        raise CheckSkipped("no table is partitioned by range on a date/time column")
    return found


@register_check("partitions_ahead", "months created ahead of each range-partitioned table")
def partitions_ahead(ctx: CheckContext) -> list[CheckResult]:
    from aegisctl.maintenance.partitions import TableReport

    limits = ctx.settings.partitions_ahead
    results = []
    for table in _tables(ctx):
        assert isinstance(table, TableReport)
        if any(p.upper is None and not p.is_default for p in table.partitions):
            continue  # a partition reaching MAXVALUE: nothing is ever missing ahead
        result = grade(
            f"partitions_ahead:{table.table}", table.future, limits.warning, limits.critical,
            lower_is_worse=True, minimum=0,
            message=f"{table.future} month(s) ahead of the current one"
                    + ("" if table.future >= limits.warning else
                       " (run `aegisctl maint partitions`)"))
        result.labels = {"table": table.table}  # one metric family, a series per table
        results.append(result)
    if not results:
        raise CheckSkipped("no partitioned table ends at a month")
    return results


@register_check("default_partition_rows", "rows in the DEFAULT partition of each "
                "range-partitioned table")
def default_partition_rows(ctx: CheckContext) -> list[CheckResult]:
    from aegisctl.maintenance.partitions import TableReport

    limits = ctx.settings.default_partition_rows
    results = []
    for table in _tables(ctx):
        assert isinstance(table, TableReport)
        if table.default_rows is None:
            continue
        result = grade(
            f"default_partition_rows:{table.table}", table.default_rows, limits.warning,
            limits.critical, minimum=0,
            message=f"{table.default_rows} row(s) in the DEFAULT partition"
                    + ("" if not table.default_rows else " (their month has no partition; "
                       "`aegisctl maint partitions` moves them)"))
        result.labels = {"table": table.table}
        results.append(result)
    if not results:
        raise CheckSkipped("no partitioned table has a DEFAULT partition")
    return results
