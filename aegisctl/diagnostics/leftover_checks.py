"""`aegisctl check`: what interrupted runs may leave behind, until the next run clears it:
scratch databases of restore tests (a server restart, a kill mid-test) and cleanup archives
not yet uploaded to the backup remote (a killed run, a lost connection, the store down)."""

from __future__ import annotations

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    register_check,
)


@register_check("scratch_databases", "scratch databases left behind by interrupted restore "
                "tests")
def scratch_databases(ctx: CheckContext) -> CheckResult:
    from aegisctl.backup.verify import leftover_scratch

    in_use = {row[0] for row in ctx.rows("SELECT DISTINCT datname FROM pg_stat_activity"
                                         " WHERE datname IS NOT NULL")}
    left = [name for name, _comment in leftover_scratch(ctx.db) if name not in in_use]
    if not left:
        return CheckResult("scratch_databases", Status.OK, 0, 0, None,
                           message="no scratch database left behind")
    return CheckResult("scratch_databases", Status.WARNING, len(left), 0, None,
                       message=f"{len(left)} scratch database(s) left behind by interrupted "
                               f"restore tests: {', '.join(left)} (the next `backup verify "
                               "--restore-test` drops them)", minimum=0)


@register_check("cleanup_archives_pending", "cleanup archives not yet uploaded to the backup "
                "remote", needs_db=False)
def cleanup_archives_pending(ctx: CheckContext) -> CheckResult:
    from aegisctl.retention.archive import pending_archives

    settings = ctx.loaded.settings
    if settings.backup.remote is None or not settings.cleanup.upload_archives:
        raise CheckSkipped("cleanup archives are not uploaded (backup.remote, "
                           "cleanup.upload_archives)")
    pending = pending_archives(settings, ctx.target.name)
    if not pending:
        return CheckResult("cleanup_archives_pending", Status.OK, 0, 0, None,
                           message="every cleanup archive is uploaded")
    return CheckResult("cleanup_archives_pending", Status.WARNING, len(pending), 0, None,
                       message=f"{len(pending)} cleanup archive(s) not yet uploaded, oldest "
                               f"{pending[0].parent.name}/{pending[0].name} (the next "
                               "`cleanup run` uploads them)", minimum=0)
