"""The `schedule:` and `scheduler:` sections of the configuration (see config.example.yaml).

`schedule:` maps a job name to the aegisctl command it runs, when, and against which target:
the one source of truth that the systemd units and the built-in scheduler are rendered from.
`scheduler:` holds what is the same for every job (state folder, shutdown, the systemd units'
user and paths). This module imports nothing heavy: the config loader imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

Duration = Annotated[float, "duration"]


@dataclass
class JobSettings:
    # An aegisctl command line without the program name and without global options,
    # e.g. "backup prune --yes". Destructive commands must say --yes.
    command: str
    # Exactly one of the three: a daily time "HH:MM" (or "HH:MM:SS"), a 5-field cron expression
    # (or @daily, @weekly...), or an interval that divides a day evenly (5m, 15m, 2h, 1d).
    at: str | None = None
    cron: str | None = None
    every: Duration | None = None
    timezone: str = "UTC"  # for `at` and `cron`
    target: str | None = None  # None: the default target
    enabled: bool = True
    # Spread the start by up to this much (RandomizedDelaySec=, and the scheduler's jitter).
    # None: 5m, or a fifth of the interval when that is shorter.
    randomized_delay: Duration | None = None
    # `check` / `jobs status`: CRITICAL when the last success is older than interval + grace.
    # None: the interval, at most 1h.
    grace: Duration | None = None
    # A run missed (host down, scheduler stopped) still starts if it is at most this late.
    misfire_grace: Duration = 3600.0
    # Stop the job (interrupt, then kill) when it runs longer; 0 = no limit.
    timeout: Duration = 0.0
    # Exit codes that count as success (a scheduled `check` exits 1/2 when it finds problems).
    success_exit_codes: list[int] = field(default_factory=lambda: [0])
    description: str | None = None


@dataclass
class SystemdSettings:
    user: str = "aegisctl"
    group: str = "aegisctl"
    # The aegisctl the units run; None: the one running `systemd render`.
    executable: str | None = None
    # The config file the units pass with --config; None: the file the units were rendered from.
    config_path: str | None = None
    # Secrets (AEGIS_DB_PASSWORD, AWS_*, OPENAI_API_KEY) as VAR=value lines, root-owned 0600.
    environment_file: str = "/etc/aegisctl/aegisctl.env"
    unit_dir: str = "/etc/systemd/system"  # where `systemd install` writes
    # Extra folders the jobs may write (each unit already gets the ones its command writes).
    read_write_paths: list[str] = field(default_factory=list)
    nice: int = 10
    log_format: Literal["text", "json"] = "text"


@dataclass
class SchedulerSettings:
    # Job locks and the local history fallback. None: $AEGISCTL_STATE_DIR, else
    # /var/lib/aegisctl as root, else $XDG_STATE_HOME/aegisctl.
    state_dir: str | None = None
    # On SIGTERM the built-in scheduler lets a running job finish for this long, then
    # interrupts it (SIGINT to its process group), then kills it after kill_timeout.
    stop_timeout: Duration = 30.0
    kill_timeout: Duration = 10.0
    # Rows of aegis_job_runs older than this are deleted after each run of the same job.
    history_keep: Duration = 180 * 86400.0
    # A job whose command needs the target's lock (backups, cleanup, maintenance...) waits this
    # long for another one holding it; still busy, the run is recorded 'skipped' (not failed).
    lock_wait: Duration = 1800.0
    systemd: SystemdSettings = field(default_factory=SystemdSettings)
