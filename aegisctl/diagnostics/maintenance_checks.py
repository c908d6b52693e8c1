"""`aegisctl check`: tables above a size that were never vacuumed or never analyzed.

"Never analyzed" is read from pg_statistic (it survives a crash, which resets the activity
statistics); "never vacuumed" from the activity statistics together with the visibility map (a
vacuum marks all-visible pages), so a statistics reset alone does not make a table look
neglected. On a standby the primary's vacuums are what count: the check is skipped there.
"""

from __future__ import annotations

from aegisctl.diagnostics.checks import CheckContext, CheckResult, CheckSkipped, grade, register_check
from aegisctl.units import format_bytes

UNMAINTAINED = """
SELECT n.nspname || '.' || c.relname, pg_table_size(c.oid),
       s.last_vacuum IS NULL AND s.last_autovacuum IS NULL AND c.relallvisible = 0,
       NOT EXISTS (SELECT 1 FROM pg_statistic st WHERE st.starelid = c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
  AND pg_table_size(c.oid) >= %s
ORDER BY 2 DESC
"""


@register_check("unmaintained_tables", "tables above a size never vacuumed or never analyzed")
def unmaintained_tables(ctx: CheckContext) -> CheckResult:
    if ctx.role == "standby":
        raise CheckSkipped("a standby (vacuum and analyze run on the primary)")
    minimum = ctx.settings.unmaintained_tables.min_size
    rows = ctx.rows(UNMAINTAINED, (minimum,))
    never_vacuumed = [(name, size) for name, size, vac, _ in rows if vac]
    never_analyzed = [(name, size) for name, size, _, ana in rows if ana]
    names = {name for name, _ in never_vacuumed + never_analyzed}
    parts = []
    for label, items, command in (("never vacuumed", never_vacuumed, "vacuum --analyze"),
                                  ("never analyzed", never_analyzed, "analyze")):
        if items:
            shown = ", ".join(f"{n} ({format_bytes(s)})" for n, s in items[:5])
            parts.append(f"{label}: {shown}{' ...' if len(items) > 5 else ''} "
                         f"(aegisctl maint {command} --table {items[0][0]})")
    message = "; ".join(parts) or f"every table of {format_bytes(minimum)}+ was vacuumed and " \
                                  "analyzed at least once"
    return grade("unmaintained_tables", len(names), 0, None, minimum=0, message=message)
