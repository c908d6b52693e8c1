"""Running one job: lock, record, run the aegisctl command in a subprocess, record the outcome.

Why a subprocess: each run is isolated (a crash, a leak or a stuck C extension cannot take the
scheduler down), its exit code is exactly what a person running the command would get, and it
can be interrupted as a whole (its own process group: pg_dump and friends stop with it). The
command is run as `python -m aegisctl` of this very installation, with --format json so its
result becomes the run's summary; its stderr is passed on line by line to our log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl import paths
from aegisctl.children import die_with_parent, exit_cause
from aegisctl.errors import ConnectionFailed, ExitCode, LockBusy, OperationFailed
from aegisctl.locks import LOCK_WAIT_ENV, Holder
from aegisctl.scheduling import history, lock
from aegisctl.scheduling.events import event
from aegisctl.scheduling.history import JobRun, LocalHistory

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import LoadedConfig
    from aegisctl.scheduling.jobs import Job

log = logging.getLogger("aegisctl.scheduling")

SUMMARY_LIMIT = 256 * 1024  # bytes of stdout kept as the run's summary


@dataclass
class RunOptions:
    trigger: str = "manual"
    log_format: str = "text"
    # Extra global options for the child, e.g. ["--data-dir", X] (the parent's own).
    child_globals: tuple[str, ...] = ()


class JobExecution:
    """One run of one job. `run()` blocks; `interrupt()` may be called from another thread."""

    def __init__(self, loaded: LoadedConfig, job: Job, options: RunOptions) -> None:
        self.loaded = loaded
        self.job = job
        self.options = options
        self._interrupt = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public ------------------------------------------------------------------------------

    def interrupt(self) -> None:
        self._interrupt.set()

    def run(self) -> JobRun:
        from aegisctl.targets import resolve_target

        settings = self.loaded.settings
        target = resolve_target(self.loaded, self.job.settings.target)
        state = paths.state_dir(settings)
        local = LocalHistory(state)
        run = JobRun(id=str(uuid.uuid4()), job=self.job.name, target=target.name,
                     trigger=self.options.trigger, command=self.job.settings.command,
                     host=socket.gethostname(), pid=os.getpid(), started_at=_now())
        holder = Holder(pid=os.getpid(), host=run.host, command=f"jobs run {run.job}",
                        started_at=run.started_at.isoformat(timespec="seconds"),
                        trigger=run.trigger, run_id=run.id)
        from aegisctl.cluster.jobs import not_leader_reason

        why = not_leader_reason(target)
        if why is not None:  # a cluster member that does not lead: skipped, not failed
            self._record_not_leader(run, target, local, why)
            return run
        path = lock.lock_path(state, target.name, self.job.name)
        try:
            with lock.job_file_lock(path, self.job.name, target.name, holder):
                return self._run_locked(run, target, local)
        except LockBusy as exc:
            self._record_skipped(run, target, local, str(exc))
            raise

    # -- steps -------------------------------------------------------------------------------

    def _connect(self, target: Any) -> psycopg.Connection[Any] | None:
        from aegisctl.db import connect

        try:
            # The job's advisory lock lives as long as this connection's session.
            return connect(self.loaded, target, f"jobs run {self.job.name}", needs="session")
        except ConnectionFailed as exc:
            event(log, logging.WARNING, "job.db_unreachable",
                  f"job {self.job.name}: {exc}; its history goes to the local file",
                  job=self.job.name, target=target.name)
            return None

    def _run_locked(self, run: JobRun, target: Any, local: LocalHistory) -> JobRun:
        conn = self._connect(target)
        recording = False
        try:
            if conn is not None:
                if not lock.try_advisory_lock(conn, self.job.name):
                    who = lock.advisory_holder(conn, self.job.name)
                    raise LockBusy(f"job '{self.job.name}' is already running for target "
                                   f"'{target.name}' on another host{who}; this start is "
                                   "skipped")
                recording = self._prepare_history(conn, run, target, local)
            self._record(run, conn if recording else None, local)
            event(log, logging.INFO, "job.started",
                  f"job {run.job} started: {run.command} (target {run.target}, trigger "
                  f"{run.trigger}, run {run.id})", job=run.job, target=run.target,
                  trigger=run.trigger, run_id=run.id, command=run.command)
            try:
                self._execute(run)
            except BaseException:
                run.status, run.finished_at = "interrupted", _now()
                run.error = run.error or "the runner itself was interrupted"
                self._finish(run, conn if recording else None, local, target)
                raise
            self._finish(run, conn if recording else None, local, target)
            return run
        finally:
            if conn is not None:
                conn.close()  # also releases the advisory lock

    def _prepare_history(self, conn: psycopg.Connection[Any], run: JobRun, target: Any,
                         local: LocalHistory) -> bool:
        """Whether runs can be recorded in this database; tidies its history if so."""
        why = None
        if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
            why = "the target is a standby (read-only)"
        elif not history.table_exists(conn):
            why = f"table {history.TABLE} is missing (run `aegisctl schema migrate`)"
        else:
            why = history.writer_denied(conn)
        if why:
            event(log, logging.INFO if "standby" in why else logging.WARNING,
                  "job.history_local", f"job {self.job.name}: {why}; its history goes to the "
                  "local file", job=self.job.name, target=target.name)
            return False
        try:
            history.mark_abandoned(conn, run.job, run.target, run.id)
            history.mark_dead_runners(conn, run.target, run.host)
            moved = local.flush_to(conn, target.name)
        except Exception as exc:
            if not type(exc).__module__.startswith("psycopg"):
                raise
            event(log, logging.WARNING, "history.db_failed",
                  f"job {self.job.name}: cannot write {history.TABLE} ({exc}); its history "
                  "goes to the local file", job=self.job.name, target=target.name)
            return False
        if moved:
            event(log, logging.INFO, "history.flushed",
                  f"copied {moved} locally recorded run(s) into {history.TABLE}",
                  target=target.name, runs=moved)
        return True

    def _record(self, run: JobRun, conn: psycopg.Connection[Any] | None,
                local: LocalHistory) -> None:
        if conn is not None:
            try:
                history.save(conn, run)
                run.recorded_in = "database"
                return
            except Exception as exc:  # the server went away mid-run: keep the record locally
                if not type(exc).__module__.startswith("psycopg"):
                    raise
                conn = None
                event(log, logging.WARNING, "history.db_failed",
                      f"could not record run {run.id} in the database ({exc}); recorded locally",
                      run_id=run.id)
        try:
            local.append(run)
        except OSError as exc:
            raise OperationFailed(f"cannot record run {run.id} of job {run.job} in "
                                  f"{local.path}: {exc.strerror}") from None
        run.recorded_in = "local"

    def _finish(self, run: JobRun, conn: psycopg.Connection[Any] | None, local: LocalHistory,
                target: Any) -> None:
        if conn is not None and conn.closed:
            conn = self._connect(target)
        self._record(run, conn, local)
        if conn is not None and run.recorded_in == "database":
            try:
                history.prune(conn, run.job, run.target,
                              self.loaded.settings.scheduler.history_keep)
            except Exception as exc:
                log.debug("pruning job history failed: %s", exc)
        level = logging.INFO if run.status == "succeeded" else logging.ERROR
        detail = f": {run.error}" if run.error and run.status != "succeeded" else ""
        event(log, level, "job.finished",
              f"job {run.job} {run.status} (exit {run.exit_code}, {run.duration_s}s, target "
              f"{run.target}, run {run.id}){detail}", job=run.job, target=run.target,
              run_id=run.id, status=run.status, exit_code=run.exit_code,
              duration_s=run.duration_s, error=run.error)

    def _record_skipped(self, run: JobRun, target: Any, local: LocalHistory, why: str) -> None:
        """The second start leaves a trace: a 'skipped' row (best effort, database only)."""
        run.status, run.finished_at, run.error = "skipped", _now(), why
        run.exit_code = 4
        event(log, logging.WARNING, "job.skipped", f"job {run.job} skipped: {why}",
              job=run.job, target=run.target, trigger=run.trigger)
        from aegisctl.db import connect

        try:
            with connect(self.loaded, target, f"jobs run {self.job.name}") as conn:
                if history.table_exists(conn):
                    history.save(conn, run)
        except Exception as exc:
            log.debug("could not record the skipped start: %s", exc)

    def _record_not_leader(self, run: JobRun, target: Any, local: LocalHistory,
                           why: str) -> None:
        """Recorded in the job history on the leader (the cluster's one history), else in the
        local file. Exit code 0: a timer on a replica has nothing to fail."""
        run.status, run.finished_at, run.error, run.exit_code = "skipped", _now(), why, 0
        event(log, logging.INFO, "job.not_leader", f"job {run.job} skipped: {why}",
              job=run.job, target=run.target, trigger=run.trigger)
        from aegisctl.db import connect

        try:
            with connect(self.loaded, target, f"jobs run {self.job.name}") as conn:
                if history.table_exists(conn):
                    history.save(conn, run)
                    run.recorded_in = "database"
                    return
        except Exception as exc:
            log.debug("could not record the skipped run in the database: %s", exc)
        self._record(run, None, local)

    # -- the child ---------------------------------------------------------------------------

    def child_argv(self) -> list[str]:
        argv = [sys.executable, "-m", "aegisctl"]
        if self.loaded.path is not None:
            argv += ["--config", str(self.loaded.path.resolve())]
        if self.job.settings.target:
            argv += ["--target", self.job.settings.target]
        argv += [*self.options.child_globals, "--format", "json",
                 "--log-format", self.options.log_format]
        return argv + self.job.argv

    def _execute(self, run: JobRun) -> None:
        env = dict(os.environ, AEGISCTL_JOB=run.job, AEGISCTL_JOB_RUN_ID=run.id)
        env[LOCK_WAIT_ENV] = f"{self.loaded.settings.scheduler.lock_wait:g}"
        # The command dies with its runner, kill -9 included (SIGINT: it stops as after
        # Ctrl-C, cleaning up); the next run on the target records the orphaned run.
        proc = subprocess.Popen(self.child_argv(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, env=env,
                                preexec_fn=die_with_parent(signal.SIGINT))
        self._proc = proc
        stdout: list[bytes] = []
        tail: deque[str] = deque(maxlen=20)
        readers = [
            threading.Thread(target=_read_all, args=(proc.stdout, stdout), daemon=True),
            threading.Thread(target=_read_lines,
                             args=(proc.stderr, lambda line: self._child_line(run, line, tail)),
                             daemon=True),
        ]
        for reader in readers:
            reader.start()
        timeout = self.job.settings.timeout
        deadline = time.monotonic() + timeout if timeout > 0 else None
        ended_by: str | None = None
        try:
            while proc.poll() is None:
                if self._interrupt.is_set():
                    ended_by = "interrupted"
                elif deadline is not None and time.monotonic() > deadline:
                    ended_by = "timeout"
                if ended_by:
                    self._stop_child(proc)
                    break
                self._interrupt.wait(0.2)
        except BaseException:
            self._stop_child(proc)
            raise
        finally:
            for reader in readers:
                reader.join(timeout=5)
            run.exit_code = proc.returncode
            run.finished_at = _now()
            run.summary = _summary(b"".join(stdout))
        if ended_by == "timeout":
            run.status = "timeout"
            run.error = f"stopped after the job's timeout of {timeout:g}s"
        elif ended_by == "interrupted":
            run.status = "interrupted"
            run.error = "interrupted: the scheduler was asked to stop"
        elif proc.returncode < 0:
            # Killed from outside (the OOM killer, kill -9): the run could not finish, which
            # says nothing about what it was doing.
            run.status = "interrupted"
            run.error = f"the command was {exit_cause(proc.returncode)}"
        elif proc.returncode in self.job.settings.success_exit_codes:
            run.status = "succeeded"
        elif proc.returncode == ExitCode.LOCKED:
            # Another run held the target's lock for all of scheduler.lock_wait: this run did
            # nothing, which is not a failure of the job. The error names the holder.
            run.status = "skipped"
            run.error = _error_line(tail, proc.returncode)
        else:
            run.status = "failed"
            run.error = _error_line(tail, proc.returncode, run.summary)

    def _stop_child(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGINT to the child's process group, as Ctrl-C would (long commands stop after
        their current step and clean up); a second SIGINT after kill_timeout (abort now);
        SIGKILL 5 s later."""
        if proc.poll() is not None:
            return
        event(log, logging.WARNING, "job.interrupting",
              f"job {self.job.name}: interrupting the command (pid {proc.pid})",
              job=self.job.name, pid=proc.pid)
        for sig, wait in ((signal.SIGINT, self.loaded.settings.scheduler.kill_timeout),
                          (signal.SIGINT, 5.0), (signal.SIGKILL, None)):
            _signal_group(proc, sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _child_line(self, run: JobRun, line: str, tail: deque[str]) -> None:
        tail.append(line)
        record = _json_object(line)
        if record is not None:  # the command logs JSON too: pass its event on, flat
            level = logging.getLevelName(str(record.get("level", "info")).upper())
            fields = {k: v for k, v in record.items()
                      if k not in ("time", "level", "logger", "event", "message")}
            event(log, level if isinstance(level, int) else logging.INFO,
                  str(record.get("event", "job.output")),
                  f"job {run.job}: {record.get('message', '')}",
                  **{**fields, "job": run.job, "run_id": run.id, "source": "command"})
            return
        event(log, logging.INFO, "job.output", f"job {run.job}: {line}", job=run.job,
              run_id=run.id, line=line)


def _json_object(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _read_all(stream: Any, sink: list[bytes]) -> None:
    size = 0
    for chunk in iter(lambda: stream.read(65536), b""):
        if size < SUMMARY_LIMIT + 1:
            sink.append(chunk)
        size += len(chunk)
    stream.close()


def _read_lines(stream: Any, handle: Callable[[str], None]) -> None:
    for raw in stream:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if line.strip():
            handle(line)
    stream.close()


def _summary(data: bytes) -> Any:
    if not data.strip():
        return None
    if len(data) > SUMMARY_LIMIT:
        return {"truncated": True, "stdout_head": data[:2000].decode("utf-8", "replace")}
    try:
        return json.loads(data)
    except ValueError:
        return {"stdout_tail": data[-2000:].decode("utf-8", "replace")}


def _error_line(tail: deque[str], code: int | None, summary: Any = None) -> str:
    """Why the command failed: its last error line, else what its JSON result says failed (a
    maint step's detail, a policy's error), else the exit code."""
    for line in reversed(tail):
        record = _json_object(line)  # the child logs JSON (--log-format json)
        if record is not None and record.get("level") == "error":
            return str(record.get("message", line))[:1000]
        if "error:" in line:
            return line.strip().removeprefix("aegisctl: error: ")[:1000]
    reason = _failure_in(summary)
    if reason:
        return f"{reason} (exit {code})"[:1000]
    if tail:
        return tail[-1].strip()[:1000]
    if code is not None and code < 0:
        return exit_cause(code)
    return f"exited with code {code}"


def _failure_in(summary: Any, depth: int = 0) -> str:
    """The first failure a command's JSON result names: an object with status 'failed' (or
    ok false) and a detail, error or problem, depth-first; "" when none."""
    if depth > 6:
        return ""
    if isinstance(summary, dict):
        failed = summary.get("status") == "failed" or summary.get("ok") is False
        why = summary.get("detail") or summary.get("error")
        problems = summary.get("problems")
        if failed and isinstance(why, str) and why:
            name = summary.get("target") or summary.get("policy") or summary.get("name")
            return f"{name}: {why}" if isinstance(name, str) and name else why
        if failed and isinstance(problems, list) and problems:
            return str(problems[0])
        for value in summary.values():
            found = _failure_in(value, depth + 1)
            if found:
                return found
    elif isinstance(summary, list):
        for item in summary:
            found = _failure_in(item, depth + 1)
            if found:
                return found
    return ""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
