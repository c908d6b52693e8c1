"""The one progress display of the CLI: status lines, a one-line spinner, progress bars.

Progress is for a person watching a terminal. It shows only when stderr is a terminal, and
never with --quiet (only errors are left) or --log-format json (stderr is then read by a
machine, one JSON object per line): a timer's log never gets bars, spinners or carriage
returns. The result on stdout is unaffected, whatever its --format. Each helper gives the core
a callback, or None when nothing is to be shown (the core then skips the work of reporting).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aegisctl.cli.context import AppState

Lines = Callable[[str], None]
Stage = Callable[[str, int], None]
Bars = Callable[[str, int, "int | None"], None]


def shown(app_state: AppState) -> bool:
    """Whether this invocation shows progress at all."""
    from aegisctl.cli.context import LogFormat

    return (not app_state.quiet and app_state.log_format is not LogFormat.json
            and sys.stderr.isatty())


def lines(app_state: AppState) -> Lines | None:
    """Status lines on stderr (a step starts, its phase, it ends), or None."""
    from aegisctl import output

    return output.print_status if shown(app_state) else None


@contextlib.contextmanager
def spinner(app_state: AppState, describe: Callable[[str, int], str],
            first: str = "starting") -> Iterator[Stage | None]:
    """One transient line that `update(stage, done)` rewrites (`describe` makes its text),
    or None."""
    if not shown(app_state):
        yield None
        return
    with _console().status(first) as status:
        def update(stage: str, done: int) -> None:
            status.update(describe(stage, done))

        yield update


@contextlib.contextmanager
def bars(app_state: AppState) -> Iterator[Bars | None]:
    """Transient bars with count, elapsed time and ETA, one per stage:
    `update(stage, done, total)` (total None: unknown), or None."""
    if not shown(app_state):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=_console(), transient=True) as progress:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield update


def _console() -> Any:
    from aegisctl import output

    return output.stderr_console()
