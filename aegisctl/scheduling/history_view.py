"""`jobs history`: the database's runs and the local fallback file's, merged."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aegisctl import paths
from aegisctl.errors import ConnectionFailed, UsageError
from aegisctl.scheduling import history
from aegisctl.scheduling.history import JobHistory, LocalHistory
from aegisctl.units import parse_duration

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import LoadedConfig
    from aegisctl.targets import Target

_FAILED = ("failed", "interrupted", "timeout", "abandoned")


def read_history(loaded: LoadedConfig, target: Target,
                 connect: Callable[[], psycopg.Connection[Any]], *, job: str | None,
                 failed: bool, since: str | None, limit: int) -> JobHistory:
    start = None
    if since:
        try:
            start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_duration(since))
        except ValueError as exc:
            raise UsageError(f"--since: {exc}") from None
    result = JobHistory([])
    runs: dict[str, history.JobRun] = {}
    try:
        conn = connect()
    except ConnectionFailed as exc:
        result.warnings.append(f"{exc}: showing only the local history file")
        conn = None
    if conn is not None:
        with conn:
            if history.table_exists(conn):
                for run in history.query(conn, job=job, target=target.name, failed=failed,
                                         since=start, limit=limit):
                    runs[run.id] = run
                result.sources.append(f"database ({target.name})")
            else:
                result.warnings.append(f"table {history.TABLE} is missing: run `aegisctl "
                                       "schema migrate`")
    local = LocalHistory(paths.state_dir(loaded.settings))
    pending = [r for r in local.read() if r.target == target.name
               and (job is None or r.job == job) and (not failed or r.status in _FAILED)
               and (start is None or r.started_at >= start)]
    if pending:
        result.sources.append(f"local file {local.path} (not yet copied to the database)")
        for run in pending:
            runs[run.id] = run
    result.runs = sorted(runs.values(), key=lambda r: r.started_at, reverse=True)[:limit]
    return result
