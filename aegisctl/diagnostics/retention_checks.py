"""`aegisctl check`: a retention backlog, i.e. rows a cleanup policy should have deleted long
ago and still has not (a row another session keeps locked is skipped by every run; a policy
nobody runs any more). Measured as how far past its policy's max_age the oldest such row is:
a stuck row makes it grow by a day every day."""

from __future__ import annotations

import datetime as dt

from aegisctl.diagnostics.checks import CheckContext, CheckResult, CheckSkipped, grade, register_check
from aegisctl.units import format_duration


@register_check("retention_backlog", "rows a cleanup policy should have deleted: how far past "
                "max_age the oldest one is")
def retention_backlog(ctx: CheckContext) -> CheckResult:
    from psycopg import sql

    from aegisctl.errors import ConfigError
    from aegisctl.retention.policy import resolve_policy
    from aegisctl.retention.settings import effective_policies

    settings = ctx.loaded.settings
    policies = {name: p for name, p in effective_policies(
        settings.cleanup, settings.partitions).items() if p.enabled}
    if not policies:
        raise CheckSkipped("no cleanup policies configured")
    now = ctx.one("SELECT now()")[0]
    worst: tuple[float, str, int] = (0.0, "", 0)
    for name, spec in sorted(policies.items()):
        try:
            policy = resolve_policy(ctx.db, name, spec)
        except ConfigError:
            continue  # `cleanup run` reports a policy that no longer resolves
        cutoff = policy.cutoff(now)
        where, params = policy.condition("t", cutoff)
        oldest, count = ctx.one(sql.SQL("SELECT min(t.{}), count(*) FROM {} AS t WHERE {}")
                                .format(sql.Identifier(policy.column), policy.table.ident(),
                                        where), params)
        if not count:
            continue
        if isinstance(oldest, dt.datetime):
            moment = oldest if oldest.tzinfo else oldest.replace(tzinfo=dt.UTC)
        else:  # a date column
            moment = dt.datetime.combine(oldest, dt.time(), dt.UTC)
        overdue = max(0.0, (cutoff - moment).total_seconds())
        if overdue >= worst[0]:
            worst = (overdue, name, int(count))
    threshold = ctx.settings.retention_backlog
    overdue, name, count = worst
    if not name:
        return grade("retention_backlog", 0.0, threshold.warning, threshold.critical,
                     unit="s", minimum=0, message="no expired row waits for its cleanup policy")
    return grade("retention_backlog", round(overdue, 1), threshold.warning, threshold.critical,
                 unit="s", minimum=0,
                 message=f"policy {name}: {count} expired row(s), the oldest "
                         f"{format_duration(round(overdue))} past max_age (rows locked by "
                         "another session are skipped by `cleanup run`; is it scheduled?)")
