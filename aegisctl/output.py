"""The one output path: every result object becomes a table for people or JSON for scripts here.

A result is any object with `to_json()` (its one, stable JSON form) and `to_view()` (what a
person sees: a list of `Fields`, `Table` and `Note` blocks). Commands call `render(result, fmt)`
and never print tables or assemble payloads themselves (patronictl's `print_output` is the model).

Data is printed inert: cells become rich `Text` (never parsed as markup) and control characters
(escape sequences stored in memory text, say) are shown as visible `\\x1b`-style escapes in the
table and as `\\u001b` escapes in JSON. Identifier columns never wrap or truncate.

The one non-CLI module allowed to use rich; it imports rich lazily so start-up stays fast.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

# C0 controls but tab and newline, DEL, and C1 controls (U+0080..U+009F: a terminal may take
# U+009B as CSI). Escape sequences start with one of these, so escaping them neutralises all.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_C1 = re.compile(r"[\x7f-\x9f]")


def inert(text: str) -> str:
    """Text from data made safe for a terminal: control characters become visible escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _default(value: Any) -> Any:
    if hasattr(value, "to_json") and callable(value.to_json):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def to_json(obj: Any) -> str:
    """Stable JSON. NaN and infinities are refused (they are not JSON); C1 controls, which
    json.dumps leaves raw with ensure_ascii=False, are escaped like C0 ones."""
    text = json.dumps(obj, indent=2, default=_default, ensure_ascii=False, allow_nan=False)
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def emit_json(obj: Any) -> None:
    sys.stdout.write(to_json(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# The view model: what a result looks like to a person


ColumnKind = Literal["id", "text", "plain", "number"]


@dataclass
class Column:
    """`id` never wraps nor truncates (users copy it); `text` wraps in its own column;
    `number` is right-aligned; `plain` is rich's default."""

    name: str
    kind: ColumnKind = "plain"


@dataclass
class Table:
    columns: list[Column | str]
    rows: list[Sequence[Any]]
    title: str | None = None
    empty: str | None = None  # said instead of an empty table, e.g. "no backups yet"


@dataclass
class Fields:
    pairs: list[tuple[str, Any]]
    title: str | None = None


@dataclass
class Note:
    """A line of prose under or between blocks (stdout: it is part of the result)."""

    text: str
    style: str = ""
    # False for a line users copy whole (a URI, an SQL statement): never folded at the width.
    wrap: bool = True


@dataclass(frozen=True)
class Marked:
    """A cell of data text with character spans to emphasise (matched search terms): printed
    inert like any cell, the spans in bold yellow when the terminal shows colour."""

    text: str
    spans: tuple[tuple[int, int], ...] = ()

    def __str__(self) -> str:
        return self.text


Block = Table | Fields | Note


@runtime_checkable
class Result(Protocol):
    def to_json(self) -> Any: ...

    def to_view(self) -> list[Block]: ...


@dataclass
class Message:
    """The smallest result: a sentence, with the same facts as JSON."""

    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Any:
        return {"message": self.text, **self.data}

    def to_view(self) -> list[Block]:
        return [Note(self.text)]


def render(result: Any, fmt: str | Enum = "table") -> None:
    """The one way a command shows its result: `fmt` is 'table', 'json', or a text format the
    result provides as `to_<fmt>()` (the monitoring formats of `check`)."""
    name = fmt.value if isinstance(fmt, Enum) else fmt
    if name == "json":
        emit_json(result.to_json())
        return
    if name != "table":  # a result's own text format, e.g. check's to_nagios()
        print_line(inert(getattr(result, f"to_{name}")()))
        return
    blocks = result.to_view()
    for block in blocks:
        _print_block(block)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    return inert(str(value))


def _print_block(block: Block) -> None:
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    console = _console()
    if isinstance(block, Note):
        console.print(Text(inert(block.text), style=block.style if color_enabled() else ""),
                      soft_wrap=not block.wrap)
        return
    if isinstance(block, Fields):
        table = RichTable(title=_title(block.title), box=box.SIMPLE, show_header=False,
                          title_justify="left")
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for key, value in block.pairs:
            table.add_row(Text(inert(key)), Text(_cell(value)))
        console.print(table)
        return
    if not block.rows and block.empty:
        console.print(Text(inert(block.empty)))
        return
    cells = [[_cell(cell) for cell in row] for row in block.rows]
    if _fixed_width(block, cells) > console.width:
        _print_records(console, block, cells)
        return
    table = RichTable(title=_title(block.title), box=box.SIMPLE_HEAD, title_justify="left")
    for index, column in enumerate(block.columns):
        col = column if isinstance(column, Column) else Column(column)
        # Identifiers and numbers keep their full width on a narrow terminal (prose wraps
        # instead): a clipped id or figure would be silently wrong.
        widest = max([len(col.name), *(len(row[index]) for row in cells if index < len(row))])
        if col.kind == "id":
            table.add_column(col.name, no_wrap=True, overflow="ignore", min_width=widest)
        elif col.kind == "text":
            table.add_column(col.name, overflow="fold", ratio=1)
        elif col.kind == "number":
            table.add_column(col.name, justify="right", no_wrap=True, min_width=widest)
        else:
            table.add_column(col.name, overflow="fold")
    for row in block.rows:
        table.add_row(*(_rich_cell(cell) for cell in row))
    console.print(table)


def _title(title: str | None) -> Any:
    """A block's title as inert text: titles name relations, targets, shapes (data), so they
    are neither Rich markup nor terminal escapes."""
    from rich.text import Text

    return Text(inert(title)) if title else None


def _fixed_width(block: Table, cells: list[list[str]]) -> int:
    """The narrowest the table can be without clipping an identifier or a figure (prose
    columns get at least 12 characters), padding included."""
    total = 2
    for index, column in enumerate(block.columns):
        col = column if isinstance(column, Column) else Column(column)
        widest = max([len(col.name), *(len(row[index]) for row in cells if index < len(row))])
        total += (widest if col.kind in ("id", "number") else min(widest, 12)) + 3
    return total


def _print_records(console: Any, block: Table, cells: list[list[str]]) -> None:
    """Too many columns for the terminal: one record per row, `column  value` lines, so
    nothing is clipped."""
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    columns = [c if isinstance(c, Column) else Column(c) for c in block.columns]
    if block.title:
        console.print(Text(inert(block.title)))
    for number, (row, row_cells) in enumerate(zip(block.rows, cells, strict=True), 1):
        table = RichTable(box=box.SIMPLE, show_header=False, title=f"{number}",
                          title_justify="left")
        table.add_column(style="bold", no_wrap=True)
        # The values' column is at least as wide as the row's identifiers and figures.
        fixed = [len(cell) for col, cell in zip(columns, row_cells, strict=False)
                 if col.kind in ("id", "number")]
        table.add_column(overflow="fold", min_width=max(fixed, default=0) or None)
        names = [col.name for col in columns]
        for name, cell in zip(names, row, strict=False):
            table.add_row(Text(inert(name)), _rich_cell(cell))
        console.print(table)


def _rich_cell(cell: Any) -> Any:
    """A table cell as Rich text: inert, with a Marked cell's spans emphasised."""
    from rich.text import Text

    return _marked(cell) if isinstance(cell, Marked) else Text(_cell(cell))


def _marked(cell: Marked) -> Any:
    from rich.text import Text

    text, last = Text(), 0
    for start, end in sorted(cell.spans):
        start, end = max(start, last), min(end, len(cell.text))
        if start >= end:
            continue
        text.append(inert(cell.text[last:start]))
        text.append(inert(cell.text[start:end]), style="bold yellow")
        last = end
    text.append(inert(cell.text[last:]))
    return text


# ---------------------------------------------------------------------------------------------
# Terminal helpers


def color_enabled(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    console = Console(
        file=stream,
        no_color=not color_enabled(stream),
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=False,
        # Into a pipe or file: wide rows (rich's 80 would fold them), unless COLUMNS says.
        width=None if stream.isatty() or os.environ.get("COLUMNS") else 200,
    )
    # rich's own handler exits 1 on a closed pipe; the CLI's handler exits quietly with 0.
    console.on_broken_pipe = _raise_broken_pipe  # type: ignore[method-assign]
    return console


def stderr_console() -> Any:
    """The console progress displays draw on (cli.progress): stderr, inert, NO_COLOR."""
    return _console(stderr=True)


def _raise_broken_pipe() -> None:
    raise BrokenPipeError


def print_table(
    columns: Sequence[str | Column], rows: Iterable[Sequence[Any]], title: str | None = None
) -> None:
    """Deprecated shim for commands not yet on `render`: same inert rendering."""
    _print_block(Table(list(columns), list(rows), title))


def print_fields(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> None:
    """Deprecated shim for commands not yet on `render`."""
    _print_block(Fields(list(pairs), title))


def print_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def warn(text: str, event: str = "warning") -> None:
    """A warning goes through the logging path, like errors: `--quiet` hides it (only errors
    are left), `--log-format json` makes it one JSON line, and it reads `aegisctl: WARNING:
    ...` otherwise. Data in it is printed inert."""
    import logging

    logging.getLogger("aegisctl").warning("%s", inert(text), extra={"event": event})


def print_status(text: str, style: str = "") -> None:
    """A progress or status line for a person: stderr, so stdout stays parseable."""
    text = inert(text)
    if style and color_enabled(sys.stderr):
        from rich.text import Text

        _console(stderr=True).print(Text(text, style=style))
    else:
        sys.stderr.write(text + "\n")


def to_json_line(obj: Any) -> str:
    """One compact JSON line (JSON lines output) under the same rules as `to_json`."""
    text = json.dumps(obj, default=_default, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":"))
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def emit_json_lines(objs: Iterable[Any], stream: Any = None) -> int:
    """Each object as one JSON line; how many were written."""
    stream = stream or sys.stdout
    count = 0
    for obj in objs:
        stream.write(to_json_line(obj) + "\n")
        count += 1
    stream.flush()
    return count
