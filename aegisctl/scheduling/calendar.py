"""When a job runs: `at`, `cron` and `every` as one calendar, rendered for both runners.

Every schedule becomes a `Calendar` (the allowed seconds, minutes, hours, days of month,
months and weekdays), from which come the systemd `OnCalendar=` expressions and the
APScheduler trigger, so a timer and the built-in scheduler fire at the same instants. The tests
compare the two against `systemd-analyze calendar --iterations`.

Cron's day rule is kept: when both day-of-month and day-of-week are restricted (neither field
starts with `*`), cron runs on either; systemd's single expression would need both, so such an
entry becomes two `OnCalendar=` lines (and an OrTrigger in the scheduler).
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aegisctl.units import format_duration

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # index 0 = Monday
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_CRON_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_AT = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


@dataclass(frozen=True)
class Calendar:
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]  # 1..31
    months: tuple[int, ...]  # 1..12
    weekdays: tuple[int, ...]  # 0 = Monday .. 6 = Sunday
    timezone: str
    # cron's rule: both day fields restricted -> either matches.
    days_or_weekdays: bool = False

    def on_calendar(self) -> list[str]:
        """The OnCalendar= expressions (one, or two for cron's day-of-month OR weekday)."""
        time = (f"{_numbers(self.hours, 0, 23)}:{_numbers(self.minutes, 0, 59)}:"
                f"{_numbers(self.seconds, 0, 59)}")
        month = _numbers(self.months, 1, 12)
        if self.days_or_weekdays:
            return [f"{_weekdays(self.weekdays)} *-{month}-* {time} {self.timezone}",
                    f"*-{month}-{_numbers(self.days, 1, 31)} {time} {self.timezone}"]
        weekday = "" if len(self.weekdays) == 7 else _weekdays(self.weekdays) + " "
        return [f"{weekday}*-{month}-{_numbers(self.days, 1, 31)} {time} {self.timezone}"]

    def trigger(self, jitter: float | None = None) -> Any:
        """The APScheduler trigger firing at the same instants."""
        from apscheduler.triggers.combining import OrTrigger
        from apscheduler.triggers.cron import CronTrigger

        def cron(days: tuple[int, ...] | None, weekdays: tuple[int, ...] | None) -> Any:
            return CronTrigger(
                second=_csv(self.seconds), minute=_csv(self.minutes), hour=_csv(self.hours),
                day=_csv(days) if days else "*", month=_csv(self.months),
                day_of_week=",".join(WEEKDAYS[d].lower() for d in weekdays) if weekdays else "*",
                timezone=ZoneInfo(self.timezone), jitter=None if self.days_or_weekdays else jitter,
            )

        if self.days_or_weekdays:
            return OrTrigger([cron(None, self.weekdays), cron(self.days, None)],
                             jitter=int(jitter) if jitter else None)
        all_days = len(self.days) == 31
        return cron(None if all_days else self.days,
                    None if len(self.weekdays) == 7 else self.weekdays)

    def next_runs(self, after: dt.datetime, count: int) -> list[dt.datetime]:
        """The next `count` instants strictly after `after` (aware datetimes, UTC)."""
        trigger = self.trigger()
        found: list[dt.datetime] = []
        current = after + dt.timedelta(microseconds=1)
        previous = None
        while len(found) < count:
            nxt = trigger.get_next_fire_time(previous, current)
            if nxt is None:
                break
            found.append(nxt.astimezone(dt.UTC))
            previous, current = nxt, nxt + dt.timedelta(seconds=1)
        return found

    def interval(self, around: dt.datetime | None = None) -> float:
        """The longest gap between consecutive runs over the coming year (or 2,000 runs),
        in seconds: a monthly job's is 31 days, a weekday job's spans the weekend."""
        start = around or dt.datetime.now(dt.UTC)
        runs = self.next_runs(start, 2)
        if len(runs) < 2:
            return 366 * 86400.0
        longest = (runs[1] - runs[0]).total_seconds()
        horizon = start + dt.timedelta(days=400)
        trigger = self.trigger()
        previous = runs[1]
        for _ in range(2000):
            nxt = trigger.get_next_fire_time(previous, previous + dt.timedelta(seconds=1))
            if nxt is None:
                break
            longest = max(longest, (nxt - previous).total_seconds())
            previous = nxt
            if previous > horizon:
                break
        return longest


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def _numbers(values: tuple[int, ...], low: int, high: int) -> str:
    """A systemd calendar component: *, start/step, or a list with a..b runs."""
    if list(values) == list(range(low, high + 1)):
        return "*"
    if len(values) >= 3:
        step = values[1] - values[0]
        if (all(b - a == step for a, b in itertools.pairwise(values))
                and values[-1] + step > high):
            return f"{values[0]:02d}/{step}"
    return ",".join(
        f"{a:02d}..{b:02d}" if b - a >= 2 else ",".join(f"{v:02d}" for v in range(a, b + 1))
        for a, b in _runs(values)
    )


def _weekdays(values: tuple[int, ...]) -> str:
    return ",".join(
        f"{WEEKDAYS[a]}..{WEEKDAYS[b]}" if b - a >= 2
        else ",".join(WEEKDAYS[v] for v in range(a, b + 1))
        for a, b in _runs(values)
    )


def _runs(values: tuple[int, ...]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


# ---------------------------------------------------------------------------------------------
# Parsing the three forms


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as UTC or "
                         "Europe/Berlin)") from None
    return name


def parse_at(text: str, timezone: str) -> Calendar:
    match = _AT.match(text.strip())
    if not match:
        raise ValueError(f"at: {text!r} is not a time of day like 02:00 or 02:00:30")
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"at: {text!r} is not a valid time of day")
    return Calendar((second,), (minute,), (hour,), tuple(range(1, 32)), tuple(range(1, 13)),
                    tuple(range(7)), check_timezone(timezone))


def parse_every(seconds: float, timezone: str) -> Calendar:
    """An interval that divides a minute, an hour or a day: it becomes a calendar, so runs
    land on round times (5m -> :00, :05, ...) under both runners, and Persistent= applies."""
    s = int(seconds)
    all_days, all_months, all_week = tuple(range(1, 32)), tuple(range(1, 13)), tuple(range(7))
    tz = check_timezone(timezone)
    if s == seconds and 0 < s < 60 and 60 % s == 0:
        return Calendar(tuple(range(0, 60, s)), tuple(range(60)), tuple(range(24)), all_days,
                        all_months, all_week, tz)
    if s == seconds and s % 60 == 0 and s < 3600 and 3600 % s == 0:
        return Calendar((0,), tuple(range(0, 60, s // 60)), tuple(range(24)), all_days,
                        all_months, all_week, tz)
    if s == seconds and s % 3600 == 0 and s <= 86400 and 86400 % s == 0:
        return Calendar((0,), (0,), tuple(range(0, 24, s // 3600)), all_days, all_months,
                        all_week, tz)
    raise ValueError(f"every: {format_duration(seconds)} does not divide a minute, an hour or a "
                     "day evenly (use 1m, 5m, 15m, 1h, 6h, 1d... or a cron: expression)")


def parse_cron(text: str, timezone: str) -> Calendar:
    expr = _MACROS.get(text.strip().lower(), text) if text.strip().startswith("@") else text
    if expr.strip().startswith("@"):
        raise ValueError(f"cron: {text!r}: unknown macro (known: {', '.join(_MACROS)})")
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron: {text!r} must have 5 fields (minute hour day-of-month month "
                         "day-of-week)")
    minute, hour, dom, month, dow = fields
    minutes = _cron_field(minute, 0, 59, "minute")
    hours = _cron_field(hour, 0, 23, "hour")
    days = _cron_field(dom, 1, 31, "day-of-month")
    months = _cron_field(month, 1, 12, "month", _MONTH_NAMES, 1)
    cron_dows = _cron_field(dow, 0, 7, "day-of-week", _CRON_DOW_NAMES, 0)
    weekdays = tuple(sorted({(d - 1) % 7 for d in cron_dows}))
    either = not dom.startswith("*") and not dow.startswith("*")
    if not dom.startswith("*") and dow.startswith("*"):
        weekdays = tuple(range(7))
    if dom.startswith("*") and not dow.startswith("*"):
        days = tuple(range(1, 32))
    if len(weekdays) == 7 and either:
        either, days = False, tuple(range(1, 32))  # "any weekday" OR anything = every day
    return Calendar((0,), minutes, hours, days, months, weekdays, check_timezone(timezone),
                    days_or_weekdays=either)


def _cron_value(text: str, names: tuple[str, ...] | None, base: int, what: str) -> int:
    if text.isdigit():
        return int(text)
    if names and text.lower() in names:
        return names.index(text.lower()) + base
    raise ValueError(f"cron {what}: {text!r} is not a number{' or a name' if names else ''}")


def _cron_field(text: str, low: int, high: int, what: str,
                names: tuple[str, ...] | None = None, base: int = 0) -> tuple[int, ...]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"cron {what}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            a, b = body.split("-", 1)
            start, end = _cron_value(a, names, base, what), _cron_value(b, names, base, what)
            if what == "day-of-week" and end == 0 and start > 0:
                end = 7  # fri-sun: Sunday as 7 closes the range
        else:
            start = _cron_value(body, names, base, what)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise ValueError(f"cron {what}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return tuple(sorted(values))


def describe(at: str | None, cron: str | None, every: float | None, timezone: str) -> str:
    if at is not None:
        return f"daily at {at} {timezone}"
    if cron is not None:
        return f"cron {cron} ({timezone})"
    return f"every {format_duration(every or 0)}"
