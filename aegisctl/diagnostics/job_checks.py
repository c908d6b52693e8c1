"""`aegisctl check`: the last successful run of each scheduled job, within its interval plus
grace (the verdicts come from the scheduler's own history, in the database or its local file)."""

from __future__ import annotations

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    register_check,
)


@register_check("scheduled_jobs", "last success of each scheduled job within interval + grace",
                needs_db=False)
def scheduled_jobs(ctx: CheckContext) -> list[CheckResult]:
    from aegisctl.scheduling.freshness import job_freshness, job_targets

    report = job_freshness(ctx.loaded.settings, ctx.conn, ctx.target.name,
                           job_target=job_targets(ctx.loaded))
    if not report.jobs:
        raise CheckSkipped("no scheduled job runs against this target")
    return [CheckResult(f"job_{job.job}", Status[job.status], job.age_s, None, job.threshold_s,
                        "s", job.message, minimum=0) for job in report.jobs]
