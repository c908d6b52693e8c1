"""The built-in scheduler (`aegisctl schedule run`): APScheduler firing the same calendars as
the systemd timers, each run going through the same JobExecution as `aegisctl jobs run`.

Misfires: a run may start up to the job's misfire_grace late (the process was busy or the
machine suspended); runs missed while the scheduler was not running at all are caught up at
start-up when they are within misfire_grace and the history shows no run since (systemd's
Persistent=true). Stopping: no new runs; a running job gets scheduler.stop_timeout to finish,
then is interrupted (SIGINT to its process group) and recorded as interrupted. Reloading
(SIGHUP): the config is read and checked again; when valid, its jobs replace the scheduled ones
(running jobs finish undisturbed) and later runs use the new config; when not, the current
schedule stays and one error line says why.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl import paths
from aegisctl.errors import AegisError, ConfigError, LockBusy
from aegisctl.scheduling import history
from aegisctl.scheduling.events import event
from aegisctl.scheduling.jobs import Job, scheduled_jobs
from aegisctl.scheduling.runner import JobExecution, RunOptions

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block

log = logging.getLogger("aegisctl.scheduling")


# Threads are started only as runs need them; this bounds how many jobs run at once, also after
# a reload has added jobs.
MAX_PARALLEL_RUNS = 32


def _select_jobs(loaded: LoadedConfig, only: list[str] | None) -> list[Job]:
    jobs = scheduled_jobs(loaded.settings)
    if only:
        unknown = sorted(set(only) - {j.name for j in jobs})
        if unknown:
            raise ConfigError(f"no enabled job named {', '.join(unknown)} in the schedule")
        jobs = [j for j in jobs if j.name in only]
    if not jobs:
        raise ConfigError("the schedule has no enabled jobs: nothing to run")
    return jobs


class ForegroundScheduler:
    def __init__(self, loaded: LoadedConfig, options: RunOptions,
                 only: list[str] | None = None,
                 reload: Callable[[], LoadedConfig] | None = None) -> None:
        """`reload` reads and checks the config again (raising ConfigError when it is not
        valid); without it a reload request is refused."""
        self.loaded = loaded
        self.options = options
        self.only = only
        self.jobs = _select_jobs(loaded, only)
        self._reload_config = reload
        self._stop = threading.Event()
        self._stop_reason = ""
        self._reload = threading.Event()
        self._active: dict[str, JobExecution] = {}
        self._lock = threading.Lock()

    def request_reload(self) -> None:
        """Safe from a signal handler: the main loop reloads at its next tick."""
        self._reload.set()

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
            timezone=dt.UTC,
            executors={"default": ThreadPoolExecutor(max(MAX_PARALLEL_RUNS, len(self.jobs) + 2))},
            job_defaults={"coalesce": True, "max_instances": 1})
        for job in self.jobs:
            self._schedule(scheduler, job)
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
            if self._reload.is_set():
                self._reload.clear()
                self.reload(scheduler)
        event(log, logging.INFO, "scheduler.stopping",
              f"scheduler stopping ({self._stop_reason or 'asked to'}): no new runs start",
              reason=self._stop_reason)
        scheduler.shutdown(wait=False)
        self._drain()
        event(log, logging.INFO, "scheduler.stopped", "scheduler stopped")

    def _schedule(self, scheduler: Any, job: Job) -> None:
        interval = job.calendar.interval()
        scheduler.add_job(self._run_job, job.calendar.trigger(job.randomized_delay(interval)),
                          args=[job], id=job.name, name=job.name,
                          misfire_grace_time=max(1, int(job.settings.misfire_grace)))

    # -- reloading (SIGHUP) ------------------------------------------------------------------

    def reload(self, scheduler: Any) -> bool:
        """Read the config again. Valid: its jobs replace the scheduled ones (a running job
        finishes undisturbed; a changed job's next run follows its new settings) and new runs
        use the new config; one line says what changed. Not valid: the current schedule and
        config stay, and one error line says why. Returns whether it was applied."""
        path = str(self.loaded.path or "the config")
        try:
            if self._reload_config is None:
                raise ConfigError("this scheduler was started without a config file to re-read")
            loaded = self._reload_config()
            jobs = _select_jobs(loaded, self.only)
        except Exception as exc:  # whatever is wrong with the new config, keep running
            message = exc.message if isinstance(exc, AegisError) else \
                f"{type(exc).__name__}: {exc}"
            event(log, logging.ERROR, "scheduler.reload_failed",
                  f"config reload failed, the current schedule stays: {message}",
                  config=path, error=message)
            return False
        old = {j.name: j for j in self.jobs}
        new = {j.name: j for j in jobs}
        added = [n for n in new if n not in old]
        removed = [n for n in old if n not in new]
        changed = [n for n in new if n in old
                   and (new[n].settings, new[n].argv) != (old[n].settings, old[n].argv)]
        for name in removed + changed:
            scheduler.remove_job(name)
        for name in added + changed:
            self._schedule(scheduler, new[name])
        self.loaded, self.jobs = loaded, jobs

        def next_run(name: str) -> str:
            nxt = scheduler.get_job(name).next_run_time
            return nxt.astimezone(dt.UTC).isoformat(timespec="seconds") if nxt else "never"

        parts = [f"added {', '.join(f'{n} (next run {next_run(n)})' for n in added)}"
                 if added else "",
                 f"changed {', '.join(f'{n} (next run {next_run(n)})' for n in changed)}"
                 if changed else "",
                 f"removed {', '.join(removed)}" if removed else ""]
        unchanged = len(jobs) - len(added) - len(changed)
        what = "; ".join(p for p in parts if p) or "no job changed"
        with self._lock:
            running = sorted(n for n in self._active if n in removed + changed)
        finishing = f"; still running under the old settings: {', '.join(running)}" \
            if running else ""
        event(log, logging.INFO, "scheduler.reloaded",
              f"config reloaded from {path}: {what} ({unchanged} unchanged){finishing}",
              config=path, added=added, changed=changed, removed=removed,
              unchanged=unchanged, jobs=[j.name for j in jobs])
        return True

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
                 history.LocalHistory(paths.state_dir(self.loaded.settings)).read()
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
