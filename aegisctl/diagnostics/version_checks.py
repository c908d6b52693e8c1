"""`aegisctl check`: known-bad versions of pgvector, PostgreSQL and Barman (a bug that affects
data, from the table shipped in aegisctl/data/known_bad_versions.json)."""

from __future__ import annotations

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    Status,
    register_check,
)
from aegisctl.diagnostics.known_bad import KnownBad, known_bad_findings, server_versions


def judge_versions(versions: dict[str, str | None], table: list[KnownBad] | None = None,
                   conditions: frozenset[str] = frozenset()) -> CheckResult:
    """The check's verdict on these version strings (product -> version, None: unknown),
    where `conditions` hold (physical_backups: enabled for the target)."""
    findings = known_bad_findings(versions, table, set(conditions))
    seen = ", ".join(f"{name} {v}" for name, v in sorted(versions.items()) if v)
    if not findings:
        return CheckResult("known_bad_versions", Status.OK, 0, 0, None, "",
                           f"{seen or 'no version known'}: no known data-affecting bug in "
                           "aegisctl's table", 0)
    return CheckResult("known_bad_versions", Status.WARNING, len(findings), 0, None, "",
                       "; ".join(f.sentence() for f in findings), 0)


def _barman_version(ctx: CheckContext) -> str | None:
    """The installed Barman's own answer, only where physical backups are enabled (else
    nothing is run)."""
    from aegisctl.errors import AegisError

    if not _physical(ctx):
        return None
    from aegisctl.backup.physical.engine import barman_version, engine_for

    try:
        engine = engine_for(ctx.loaded, ctx.target)
        if not engine.barman_path and not engine.installed():
            return None
        return barman_version(engine)
    except (AegisError, OSError):
        return None


def _physical(ctx: CheckContext) -> bool:
    from aegisctl.backup.physical import hooks

    if "physical_enabled" not in ctx.memo:
        ctx.memo["physical_enabled"] = hooks.enabled(ctx.loaded, ctx.target)
    return bool(ctx.memo["physical_enabled"])


@register_check("known_bad_versions", "pgvector, PostgreSQL and Barman at a version with a "
                "known data-affecting bug (table shipped with aegisctl)")
def known_bad_versions(ctx: CheckContext) -> CheckResult:
    versions = server_versions(ctx.db)
    versions["barman"] = _barman_version(ctx)
    return judge_versions(versions, conditions=frozenset(
        {"physical_backups"} if _physical(ctx) else set()))
