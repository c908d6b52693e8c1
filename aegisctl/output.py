"""Rendering results: tables on a terminal, stable JSON for scripts.

The one non-CLI module allowed to use rich; it imports rich lazily so start-up stays fast.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_default, ensure_ascii=False)


def emit_json(obj: Any) -> None:
    sys.stdout.write(to_json(obj) + "\n")
    sys.stdout.flush()


def color_enabled(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(
        file=stream,
        no_color=not color_enabled(stream),
        highlight=False,
        soft_wrap=False,
        width=None if stream.isatty() else 200,
    )


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None
) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    _console().print(table)


def print_fields(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> None:
    """A two-column key/value listing."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in pairs:
        table.add_row(key, "" if value is None else str(value))
    _console().print(table)


def print_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def print_status(text: str, style: str = "") -> None:
    """A progress or status line for a person: stderr, so stdout stays parseable."""
    if style and color_enabled(sys.stderr):
        _console(stderr=True).print(text, style=style)
    else:
        sys.stderr.write(text + "\n")
