"""aegisctl health."""

from __future__ import annotations

import time

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, OutputFormat, state
from aegisctl.errors import ConnectionFailed


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
            output.render(report, "json")
        raise
    report.reachable = True
    report.connect_ms = round((time.perf_counter() - started) * 1000, 1)
    with conn:
        probe(conn, report, loaded.settings.schema.extensions)
    output.render(report, app_state.fmt(fmt))


def register(app: typer.Typer) -> None:
    app.command("health")(health)


# Loaded lazily by cli.main like the groups: a Typer app with one command and no callback is
# that command itself.
app = typer.Typer(add_completion=False)
register(app)
