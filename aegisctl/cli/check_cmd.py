"""aegisctl check: every check against the thresholds of the config, monitoring-plugin style."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from aegisctl import output
from aegisctl.cli.context import state


class CheckFormat(StrEnum):
    table = "table"
    json = "json"
    nagios = "nagios"


app = typer.Typer(add_completion=False)


def _names(values: list[str] | None) -> list[str]:
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


@app.command("check")
def check(
    ctx: typer.Context,
    fmt: Annotated[CheckFormat | None, typer.Option(
        "--format", "-f", help="table for people, json for scripts, nagios for monitoring "
        "plugins (status line + perfdata).")] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Run only these checks (repeat, or comma-separate).")] = None,
    skip: Annotated[list[str] | None, typer.Option(
        "--skip", help="Leave these checks out (repeat, or comma-separate).")] = None,
    all_targets: Annotated[bool, typer.Option(
        "--all-targets", help="Check every configured target (primary and replicas).")] = False,
    prometheus: Annotated[str | None, typer.Option(
        "--prometheus", metavar="FILE", help="Also write the measurements to FILE for "
        "node_exporter's textfile collector (atomically).")] = None,
    list_checks: Annotated[bool, typer.Option(
        "--list", help="List the available checks and exit.")] = False,
) -> None:
    """Every health check against the config's thresholds; exit 0/1/2/3 OK/WARN/CRIT/UNKNOWN.

    The exit code is the worst status (the Monitoring Plugins convention).

    Checks: connections, cache hit ratio, slow statements, long transactions,
    lock waits, database size, replication lag, standby count and WAL
    receivers, slots, wraparound, invalid indexes, table and index bloat,
    sequences, disk space, tables never vacuumed or analyzed, vector indexes
    and recall, backup age, restore-test age, pending uploads, and on a Patroni
    cluster target its leader, pause, pending restarts, scheduled switchover,
    timeline changes and each member's lag (--list shows them). An unreachable
    target is CRITICAL; a check that cannot be evaluated, a check named by
    --only that does not apply, or a configuration error, is UNKNOWN. Each
    target may have its own checks and thresholds (targets.NAME.checks).

    Examples:

      aegisctl check

      aegisctl check --format nagios --skip vector_recall

      aegisctl check --all-targets --prometheus /var/lib/prom/aegisctl.prom
    """
    from aegisctl.diagnostics.checks import (
        CheckReport,
        registered_checks,
        run_target,
        select_checks,
        target_checks,
    )
    from aegisctl.diagnostics.prometheus import write_prometheus
    from aegisctl.errors import AegisError

    app_state = state(ctx)
    chosen = fmt or CheckFormat(app_state.fmt(None).value)
    if list_checks:
        from aegisctl.diagnostics.checks import CheckList

        listing = CheckList(list(registered_checks().values()))
        output.render(listing, "json" if chosen is CheckFormat.json else "table")
        return
    try:
        from aegisctl.db import connect
        from aegisctl.targets import resolve_target

        loaded = app_state.config()
        if all_targets and loaded.settings.targets:
            targets = [resolve_target(loaded, name) for name in loaded.settings.targets]
        else:
            targets = [app_state.target()]
        # Each target has its own checks.skip (targets.NAME.checks), checked before any runs.
        plans = [(target, select_checks(_names(only), _names(skip),
                                        target_checks(loaded, target.name).skip))
                 for target in targets]
        report = CheckReport([
            run_target(loaded, target, specs,
                       lambda t=target: connect(loaded, t, "check", "query"),  # type: ignore[misc]
                       requested=_names(only))
            for target, specs in plans])
        if prometheus:
            write_prometheus(report, prometheus)
    except AegisError as exc:
        if chosen is CheckFormat.nagios:
            sys.stdout.write(f"AEGISCTL UNKNOWN - {exc}\n")
        else:
            output.print_status(f"aegisctl: error: {exc}")
        raise typer.Exit(3) from None
    output.render(report, chosen.value)
    raise typer.Exit(report.exit_code)
