"""aegisctl cluster: a Patroni cluster (or multi-host target) as aegisctl sees it."""

from __future__ import annotations

import typer

from aegisctl import output
from aegisctl.cli.context import FormatOption, state

app = typer.Typer(help="A cluster target (Patroni or a multi-host DSN): members, roles, lag, "
                  "and the member aegisctl uses.\n\nExample: aegisctl cluster status",
                  no_args_is_help=True)


@app.callback()
def _group() -> None:
    """A cluster target (Patroni or a multi-host DSN): members, roles, lag, and the member
    aegisctl uses. Example: aegisctl cluster status"""


@app.command("status")
def status(ctx: typer.Context, fmt: FormatOption = None) -> None:
    """Show the cluster's members (role, state, timeline, lag), whether it is paused or has a
    switchover scheduled, and which member aegisctl would use right now for writes (the
    leader) and for reads (a streaming replica within patroni.max_lag, else the leader).

    Each choice is confirmed on a real connection (pg_is_in_recovery(), timeline). Exits 3
    when no Patroni REST API answers, 2 when the target is not a cluster.

    Examples:

      aegisctl --target cluster cluster status

      aegisctl cluster status --format json | jq .writes.member
    """
    from aegisctl.cluster.status import cluster_status

    app_state = state(ctx)
    result = cluster_status(app_state.config(), app_state.target())
    output.render(result, app_state.fmt(fmt))
