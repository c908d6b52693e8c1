"""The built-in scheduler (`aegisctl schedule run`): APScheduler firing the same calendars as
the systemd timers, each run going through the same JobExecution as `aegisctl jobs run`.

Misfires: a run may start up to the job's misfire_grace late (the process was busy or the
machine suspended); runs missed while the scheduler was not running at all are caught up at
start-up when they are within misfire_grace and the history shows no run since (systemd's
Persistent=true). Stopping: no new runs; a running job gets scheduler.stop_timeout to finish,
then is interrupted (SIGINT to its process group) and recorded as interrupted.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.errors import AegisError, ConfigError, LockBusy
from aegisctl.scheduling import history
from aegisctl.scheduling.events import event
from aegisctl.scheduling.jobs import Job, scheduled_jobs
from aegisctl.scheduling.runner import JobExecution, RunOptions

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block

log = logging.getLogger("aegisctl.scheduling")


class ForegroundScheduler:
    def __init__(self, loaded: LoadedConfig, options: RunOptions,
                 only: list[str] | None = None) -> None:
        self.loaded = loaded
        self.options = options
        jobs = scheduled_jobs(loaded.settings)
        if only:
            unknown = sorted(set(only) - {j.name for j in jobs})
            if unknown:
                raise ConfigError(f"no enabled job named {', '.join(unknown)} in the schedule")
            jobs = [j for j in jobs if j.name in only]
        if not jobs:
            raise ConfigError("the schedule has no enabled jobs: nothing to run")
        self.jobs = jobs
        self._stop = threading.Event()
        self._stop_reason = ""
        self._active: dict[str, JobExecution] = {}
        self._lock = threading.Lock()

    def request_stop(self, reason: str) -> None:
        """Safe from a signal handler: sets flags. A second request interrupts running jobs
        at once instead of waiting for stop_timeout."""
        if self._stop.is_set():
            for execution in list(self._active.values()):
                execution.interrupt()
        self._stop_reason = reason
        self._stop.set()

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(
            timezone=dt.UTC, executors={"default": ThreadPoolExecutor(len(self.jobs) + 2)},
            job_defaults={"coalesce": True, "max_instances": 1})
        for job in self.jobs:
            interval = job.calendar.interval()
            scheduler.add_job(self._run_job, job.calendar.trigger(job.randomized_delay(interval)),
                              args=[job], id=job.name, name=job.name,
                              misfire_grace_time=max(1, int(job.settings.misfire_grace)))
        scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        scheduler.start()
        for job in self.jobs:
            nxt = scheduler.get_job(job.name).next_run_time
            event(log, logging.INFO, "scheduler.job", f"job {job.name}: {job.when}, next run "
                  f"{nxt.astimezone(dt.UTC).isoformat(timespec='seconds') if nxt else 'never'}"
                  f": {job.settings.command}", job=job.name,
                  next_run=nxt.isoformat() if nxt else None, command=job.settings.command)
        event(log, logging.INFO, "scheduler.started",
              f"scheduler started with {len(self.jobs)} job(s)", jobs=[j.name for j in self.jobs])
        self._catch_up(scheduler)
        while not self._stop.wait(0.5):
            pass
        event(log, logging.INFO, "scheduler.stopping",
              f"scheduler stopping ({self._stop_reason or 'asked to'}): no new runs start",
              reason=self._stop_reason)
        scheduler.shutdown(wait=False)
        self._drain()
        event(log, logging.INFO, "scheduler.stopped", "scheduler stopped")

    def _run_job(self, job: Job, catch_up_of: dt.datetime | None = None) -> None:
        if self._stop.is_set():
            return
        if catch_up_of is not None and not self._missed(job, catch_up_of):
            return
        execution = JobExecution(self.loaded, job, self.options)
        with self._lock:
            if job.name in self._active:  # its catch-up run and a regular one met
                event(log, logging.INFO, "job.still_running",
                      f"job {job.name}: already running here; this run is not started",
                      job=job.name)
                return
            self._active[job.name] = execution
        try:
            execution.run()
        except LockBusy:
            pass  # logged and recorded as skipped by the runner
        except AegisError as exc:
            event(log, logging.ERROR, "job.error", f"job {job.name} could not run: {exc}",
                  job=job.name, error=str(exc))
        except Exception as exc:  # one job's failure never stops the scheduler
            log.exception("job %s: unexpected %s", job.name, type(exc).__name__,
                          extra={"event": "job.error", "fields": {"job": job.name}})
        finally:
            with self._lock:
                self._active.pop(job.name, None)

    def _drain(self) -> None:
        settings = self.loaded.settings.scheduler
        deadline = time.monotonic() + settings.stop_timeout
        if self._active:
            event(log, logging.INFO, "scheduler.waiting",
                  f"waiting up to {settings.stop_timeout:g}s for running job(s): "
                  f"{', '.join(self._active)}", jobs=list(self._active))
        while self._active and time.monotonic() < deadline:
            time.sleep(0.2)
        with self._lock:
            running = list(self._active.values())
        for execution in running:
            execution.interrupt()
        deadline = time.monotonic() + settings.kill_timeout + 15
        while self._active and time.monotonic() < deadline:
            time.sleep(0.2)

    def _on_missed(self, ev: Any) -> None:
        from apscheduler.events import EVENT_JOB_MISSED

        if ev.code == EVENT_JOB_MISSED:
            event(log, logging.WARNING, "job.missed",
                  f"job {ev.job_id}: the run due at {ev.scheduled_run_time} is later than its "
                  "misfire_grace; skipped", job=ev.job_id,
                  scheduled=str(ev.scheduled_run_time))
        else:
            event(log, logging.WARNING, "job.still_running",
                  f"job {ev.job_id}: the previous run is still going; this run is skipped",
                  job=ev.job_id)

    # -- catching up on runs missed while the scheduler was down -----------------------------

    def _catch_up(self, scheduler: Any) -> None:
        now = dt.datetime.now(dt.UTC)
        for job in self.jobs:
            # The last scheduled instant within misfire_grace (one interval back at most).
            window = min(job.settings.misfire_grace, job.calendar.interval(now))
            due = [t for t in job.calendar.next_runs(now - dt.timedelta(seconds=window), 100)
                   if t <= now] if window > 0 else []
            if due:
                scheduler.add_job(self._run_job, "date", run_date=now, args=[job, due[-1]],
                                  id=f"{job.name}-catch-up", misfire_grace_time=None)

    def _missed(self, job: Job, due: dt.datetime) -> bool:
        """True when no run of `job` started at or after `due` (ignoring skipped starts)."""
        from aegisctl.db import connect
        from aegisctl.targets import resolve_target

        target = resolve_target(self.loaded, job.settings.target)
        latest: dt.datetime | None = None
        try:
            with connect(self.loaded, target, "schedule run") as conn:
                if history.table_exists(conn):
                    runs = [r for r in history.query(conn, job=job.name, target=target.name,
                                                     limit=5) if r.status != "skipped"]
                    latest = runs[0].started_at if runs else None
        except AegisError:
            pass
        local = [r.started_at for r in
                 history.LocalHistory(history.state_dir(self.loaded.settings)).read()
                 if r.job == job.name and r.target == target.name and r.status != "skipped"]
        latest = max([t for t in (latest, *local) if t is not None], default=None)
        if latest is not None and latest >= due:
            return False
        event(log, logging.INFO, "job.catch_up",
              f"job {job.name}: the run due at {due.isoformat(timespec='seconds')} was missed "
              f"(within misfire_grace); running it now", job=job.name, due=due.isoformat())
        return True


# ---------------------------------------------------------------------------------------------
# schedule list


@dataclass
class ScheduledJobView:
    job: Job
    target: str
    on_calendar: list[str]
    next_runs: list[dt.datetime]
    interval_s: float

    def to_json(self) -> dict[str, Any]:
        s = self.job.settings
        return {"job": self.job.name, "command": s.command, "target": self.target,
                "enabled": s.enabled, "when": self.job.when, "at": s.at, "cron": s.cron,
                "every_s": s.every, "timezone": s.timezone, "on_calendar": self.on_calendar,
                "interval_s": self.interval_s,
                "randomized_delay_s": self.job.randomized_delay(self.interval_s),
                "grace_s": self.job.grace(self.interval_s),
                "misfire_grace_s": s.misfire_grace, "timeout_s": s.timeout,
                "next_runs": [t.isoformat() for t in self.next_runs]}


@dataclass
class ScheduleOverview:
    jobs: list[ScheduledJobView]

    def to_json(self) -> dict[str, Any]:
        return {"jobs": [j.to_json() for j in self.jobs]}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Table

        rows = [(v.job.name, v.target, v.job.settings.command, v.job.when,
                 "\n".join(t.strftime("%Y-%m-%d %H:%M:%S") for t in v.next_runs)
                 if v.job.settings.enabled else "disabled")
                for v in self.jobs]
        return [Table([Column("job", "id"), Column("target", "id"), Column("command", "text"),
                       Column("when"), Column("next run (UTC)")],
                      list(rows), title="schedule", empty="the schedule is empty")]


def schedule_overview(loaded: LoadedConfig, count: int = 1,
                      now: dt.datetime | None = None) -> ScheduleOverview:
    from aegisctl.targets import resolve_target

    now = now or dt.datetime.now(dt.UTC)
    views = []
    for job in scheduled_jobs(loaded.settings, include_disabled=True):
        try:
            target = resolve_target(loaded, job.settings.target).name
        except ConfigError:
            target = job.settings.target or "(default)"
        views.append(ScheduledJobView(job, target, job.calendar.on_calendar(),
                                      job.calendar.next_runs(now, count),
                                      job.calendar.interval(now)))
    return ScheduleOverview(views)
