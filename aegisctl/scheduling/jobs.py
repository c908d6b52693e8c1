"""The schedule, validated: each job's command, calendar and defaults.

`check_schedule` runs on every config load (config.py calls it) and needs nothing but the
settings. Whether each command exists and its options parse is checked against the live
command tree by `aegisctl.cli.command_tree`, which `config validate`, `schedule`, `systemd` and
`jobs run` call (it imports every command group, too heavy for every load); so is the rule
that an unattended destructive command states its intent with --yes, derived from the
commands' own marks.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aegisctl.errors import ConfigError
from aegisctl.scheduling.calendar import (
    Calendar,
    describe,
    parse_at,
    parse_cron,
    parse_every,
)
from aegisctl.units import format_duration

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aegisctl.scheduling.settings import JobSettings, SchedulerSettings

class Settings(Protocol):
    """What the schedule reads of the settings (config.Settings has it). A protocol, so this
    module never imports config, which calls check_schedule on every load."""

    @property
    def schedule(self) -> Mapping[str, JobSettings]: ...
    @property
    def scheduler(self) -> SchedulerSettings: ...
    @property
    def targets(self) -> Mapping[str, object]: ...
    @property
    def default_target(self) -> str | None: ...


JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


@dataclass
class Job:
    name: str
    settings: JobSettings
    argv: list[str]
    calendar: Calendar

    @property
    def when(self) -> str:
        s = self.settings
        return describe(s.at, s.cron, s.every, s.timezone)

    def grace(self, interval: float) -> float:
        if self.settings.grace is not None:
            return self.settings.grace
        return min(interval, 3600.0)

    def randomized_delay(self, interval: float) -> float:
        if self.settings.randomized_delay is not None:
            return self.settings.randomized_delay
        return float(int(min(300.0, interval / 5)))


def split_command(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"command {command!r} cannot be split into words: {exc}") from None
    if not argv:
        raise ValueError("command is empty")
    if argv[0] == "aegisctl":
        raise ValueError(f"command {command!r}: leave out the program name "
                         f"(write {shlex.join(argv[1:])!r})")
    if argv[0].startswith("-"):
        raise ValueError(f"command {command!r} starts with an option: global options do not "
                         "belong in a scheduled command (set the job's target: key instead)")
    return argv


def build_job(name: str, job: JobSettings) -> Job:
    """Raises ValueError with a message naming the problem (the caller adds the key path)."""
    if not JOB_NAME.match(name):
        raise ValueError("a job name is 1-40 lower-case letters, digits, '-' or '_', starting "
                         "with a letter or digit (it names the systemd units)")
    argv = split_command(job.command)
    given = [key for key in ("at", "cron", "every") if getattr(job, key) is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of at, cron or every"
                         + (f" (got {', '.join(given)})" if given else ""))
    if job.at is not None:
        calendar = parse_at(job.at, job.timezone)
    elif job.cron is not None:
        calendar = parse_cron(job.cron, job.timezone)
    else:
        calendar = parse_every(float(job.every or 0), job.timezone)
    for key in ("grace", "misfire_grace", "timeout", "randomized_delay"):
        value = getattr(job, key)
        if value is not None and value < 0:
            raise ValueError(f"{key} cannot be negative")
    if any(not 0 <= code <= 255 for code in job.success_exit_codes):
        raise ValueError("success_exit_codes are exit codes 0..255")
    return Job(name, job, argv, calendar)


def scheduled_jobs(settings: Settings, include_disabled: bool = False) -> list[Job]:
    jobs = [build_job(name, job) for name, job in settings.schedule.items()]
    return [j for j in jobs if include_disabled or j.settings.enabled]


def find_job(settings: Settings, name: str) -> Job:
    if name not in settings.schedule:
        known = ", ".join(sorted(settings.schedule)) or "none configured"
        raise ConfigError(f"no job named '{name}' in the schedule (jobs: {known})",
                          hint="see `aegisctl schedule list`")
    return build_job(name, settings.schedule[name])


def check_schedule(settings: Settings, origin: str) -> None:
    """Called from config._check_consistency: every job well-formed, every target known."""
    for name, job in settings.schedule.items():
        try:
            build_job(name, job)
        except ValueError as exc:
            raise ConfigError(f"{origin}: schedule.{name}: {exc}") from None
        if job.target and job.target not in settings.targets and job.target != "embedded":
            known = ", ".join(sorted(settings.targets)) or "none configured"
            raise ConfigError(f"{origin}: schedule.{name}.target: unknown target "
                              f"'{job.target}' (targets: {known})")
    sched = settings.scheduler
    if sched.stop_timeout < 0 or sched.kill_timeout < 0 or sched.lock_wait < 0:
        raise ConfigError(f"{origin}: scheduler: stop_timeout, kill_timeout and lock_wait "
                          "cannot be negative")
    for key in ("user", "group"):
        if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", getattr(sched.systemd, key)):
            raise ConfigError(f"{origin}: scheduler.systemd.{key}: not a valid user/group name")
    for key in ("executable", "config_path", "environment_file", "unit_dir"):
        value = getattr(sched.systemd, key)
        if value is not None and (not value.startswith("/")
                                  or re.search(r"[\s\"'%$\\;]", value)):
            raise ConfigError(f"{origin}: scheduler.systemd.{key}: must be an absolute path "
                              "without spaces or quotes")


# How far ahead collisions are looked for, and at most how many runs per job.
_COLLISION_DAYS = 400
_COLLISION_RUNS = 5000


def lock_collisions(settings: Settings, jobs: list[Job],
                    now: dt.datetime | None = None) -> list[str]:
    """One warning per pair of `jobs` (all taking the target lock) on the same target that
    fire at the same minute within the coming year."""
    start = now or dt.datetime.now(dt.UTC)
    horizon = start + dt.timedelta(days=_COLLISION_DAYS)
    minutes: dict[str, dict[dt.datetime, dt.datetime]] = {}
    for job in jobs:
        runs = [r for r in job.calendar.next_runs(start, _COLLISION_RUNS) if r <= horizon]
        minutes[job.name] = {r.replace(second=0, microsecond=0): r for r in runs}
    warnings = []
    for i, first in enumerate(jobs):
        for second in jobs[i + 1:]:
            target = first.settings.target or settings.default_target or "default"
            if target != (second.settings.target or settings.default_target or "default"):
                continue
            common = sorted(set(minutes[first.name]) & set(minutes[second.name]))
            if not common:
                continue
            moment = minutes[first.name][common[0]].isoformat(timespec="minutes")
            warnings.append(
                f"schedule: jobs {first.name} ({first.when}) and {second.name} "
                f"({second.when}) share the lock of their target and fire together (next at "
                f"{moment}): one waits up to scheduler.lock_wait "
                f"({format_duration(settings.scheduler.lock_wait)}), then is skipped; move "
                "one of them")
    return warnings
