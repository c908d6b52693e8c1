"""Durations and sizes as written in the config: 90s, 15m, 2h, 14d, 2w, 6mo, 1y; 100GB."""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "mo": 30 * 86400,
    "y": 365 * 86400,
}
# The longest duration or age accepted anywhere: 1000 years back from now is still a date
# Python and PostgreSQL can compute; 2100y or 99999999999999999999y would overflow them.
MAX_YEARS = 1000
MAX_DURATION = MAX_YEARS * 365 * 86400.0
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d|w|mo|y)?\s*$")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds in a duration; a bare number means seconds. Raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90s, 15m, 2h, 14d, 6mo or 1y")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration: use a number with s, m, h, d, w, mo "
                             "or y")
        number, unit = match.groups()
        seconds = float(number) * _DURATION_UNITS[unit or "s"]
    if not seconds <= MAX_DURATION:  # also catches inf and nan
        raise ValueError(f"{value!r} is too long: the maximum is {MAX_YEARS}y")
    return seconds


def parse_size(value: str | int) -> int:
    """Bytes in a size such as 100GB or 512MiB; a bare number means bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 100GB")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(value)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size: use a number with KB, MB, GB, TB (or KiB, MiB...)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def format_duration(seconds: float) -> str:
    """The shortest honest rendering: 45s, 12m, 3h, 14d."""
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


def format_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


# ---------------------------------------------------------------------------------------------
# Retention ages: months and years are calendar units here, not 30/365-day approximations.
# "13mo" on 2026-03-31 means 2025-02-28 (PostgreSQL's interval arithmetic clamps to the end of
# the month), so a policy written in months deletes exactly what a person reading it expects.

_AGE_RE = re.compile(r"^\s*(\d+)\s*(s|min|m|h|d|w|mo|y)\s*$")


@dataclass(frozen=True)
class CalendarAge:
    """An age as PostgreSQL's interval has it: whole months (calendar) plus seconds."""

    months: int = 0
    seconds: float = 0.0
    text: str = ""

    def __str__(self) -> str:
        return self.text or f"{self.months}mo {self.seconds:g}s"


def parse_age(value: str | int) -> CalendarAge:
    """A retention age such as 30d, 13mo, 6mo, 1y, 12h (a bare integer means days).

    Raises ValueError with the accepted forms. The age must be positive: a zero age would
    delete everything."""
    if isinstance(value, bool):
        raise ValueError("expected an age like 30d, 6mo or 13mo")
    if isinstance(value, int):
        value = f"{value}d"
    match = _AGE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not an age: use a whole number with s, m, h, d, w, mo "
                         "or y (30d, 13mo, 1y)")
    number, unit = int(match.group(1)), match.group(2)
    if number <= 0:
        raise ValueError(f"{value!r}: an age must be greater than zero")
    if number * (_DURATION_UNITS[unit] if unit not in ("mo", "y") else
                 (30 * 86400 if unit == "mo" else 365 * 86400)) > MAX_DURATION:
        raise ValueError(f"{value!r} is too long: the maximum is {MAX_YEARS}y")
    text = f"{number}{unit}"
    if unit == "mo":
        return CalendarAge(months=number, text=text)
    if unit == "y":
        return CalendarAge(months=12 * number, text=text)
    return CalendarAge(seconds=float(number * _DURATION_UNITS[unit]), text=text)


def subtract_age(moment: dt.datetime, age: CalendarAge) -> dt.datetime:
    """`moment - age` with calendar months clamped to the month's last day, like PostgreSQL's
    `timestamptz - interval` in UTC."""
    months = moment.year * 12 + (moment.month - 1) - age.months
    year, month = divmod(months, 12)
    month += 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day) - dt.timedelta(seconds=age.seconds)
