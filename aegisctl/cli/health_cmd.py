"""aegisctl health."""

from __future__ import annotations

import time

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, OutputFormat, state
from aegisctl.errors import ConnectionFailed, ExitCode


def health(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Check that the database answers, and what it is.

    Reports the server version, whether it is a primary or a standby, connect time and
    round-trip latency, and which of the configured extensions are installed.

    Exits 0 when the server is reachable, 3 when it is not.

    Examples:

      aegisctl health

      aegisctl --target replica health --format json
    """
    from aegisctl.health import HealthReport, probe

    app_state = state(ctx)
    loaded = app_state.config()
    target = app_state.target()
    report = HealthReport(target=target.name, reachable=False, dsn=target.display_dsn,
                          embedded=target.embedded)
    started = time.perf_counter()
    try:
        conn = app_state.connect("health")
    except ConnectionFailed as exc:
        if app_state.fmt(fmt) is OutputFormat.json:
            report.error = str(exc)
            output.emit_json(report.to_json())
        raise
    report.reachable = True
    report.connect_ms = round((time.perf_counter() - started) * 1000, 1)
    with conn:
        probe(conn, report, loaded.settings.schema.extensions)

    if app_state.fmt(fmt) is OutputFormat.json:
        output.emit_json(report.to_json())
    else:
        output.print_fields(
            [
                ("target", f"{report.target} ({'embedded' if report.embedded else report.dsn})"),
                ("server", f"PostgreSQL {report.server_version}"),
                ("role", report.role),
                ("database", f"{report.database} as {report.user}"),
                ("connect", f"{report.connect_ms} ms"),
                ("latency", f"{report.latency_ms} ms (median of 5 × SELECT 1)"),
            ],
            title="health",
        )
        output.print_table(
            ["extension", "status", "installed", "available", "note"],
            [(e.name, e.status, e.installed_version or "-", e.default_version or "-",
              "; ".join(e.notes)) for e in report.extensions],
        )
    if not report.reachable:
        raise typer.Exit(int(ExitCode.UNREACHABLE))


def register(app: typer.Typer) -> None:
    app.command("health")(health)
