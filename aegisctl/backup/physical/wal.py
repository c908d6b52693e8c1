"""WAL streaming as a supervised foreground service, and its status.

`stream_wal` runs Barman's `receive-wal` (pg_receivewal over the slot) as a child, restarts it
with backoff when it dies, and moves completed segments into the archive every
`archive_interval` (Barman's `archive-wal`, which its cron would otherwise do). The slot keeps
the WAL a dead streamer has not fetched, so a restarted streamer resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.engine import Engine, engine_for
from aegisctl.backup.physical.ha import Upstream, follow_leader, leader_moved
from aegisctl.backup.physical.timelines import TimelineWatch
from aegisctl.backup.physical.walfiles import archived_wals as archived_wals  # re-exported
from aegisctl.errors import OperationFailed

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target

log = logging.getLogger(__name__)


@dataclass
class StreamSummary:
    target: str
    started_at: dt.datetime
    stopped_at: dt.datetime
    restarts: int
    archived_runs: int

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "started_at": self.started_at,
                "stopped_at": self.stopped_at, "restarts": self.restarts,
                "archive_runs": self.archived_runs}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        return [Note(f"WAL streaming for {self.target} stopped after "
                     f"{(self.stopped_at - self.started_at).total_seconds():.0f} s "
                     f"({self.restarts} restart(s) of the receiver)")]


def stream_wal(loaded: LoadedConfig, target: Target, *,
               stop: threading.Event | None = None,
               on_event: Callable[[str], None] | None = None,
               max_runtime: float | None = None) -> StreamSummary:
    """Stream until `stop` is set, SIGTERM/SIGINT arrives, or `max_runtime` passes. On a
    cluster target every (re)start of the receiver first finds the leader (physical/ha.py),
    and a leader change while it runs restarts it there."""
    engine = engine_for(loaded, target)
    if not engine.server_config.exists():
        raise OperationFailed(f"physical backups are not enabled for '{target.name}'",
                              hint="aegisctl backup physical enable")
    physical = loaded.settings.backup.physical
    stop = stop or threading.Event()
    say = on_event or (lambda text: log.info("%s", text))
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    started = dt.datetime.now(dt.UTC)
    restarts, archive_runs, delay = 0, 0, 1.0
    child: subprocess.Popen[str] | None = None
    upstream: Upstream | None = None
    last_archive = 0.0
    started_child = time.monotonic()
    log_file = engine.make_dir(engine.home / "log") / f"receive-wal-{engine.server}.log"
    timelines = TimelineWatch(engine)
    last_wait: str | None = None
    from aegisctl.backup.physical.offsite_upload import start_wal_shipper

    shipper = start_wal_shipper(loaded, target, engine, say)  # with backup.remote: off-site
    try:
        while not stop.is_set():
            if child is not None and child.poll() is not None:
                say(f"receive-wal exited with {child.returncode}: "
                    f"{_why_not_streaming(loaded, target, engine, log_file)}; "
                    f"restarting in {delay:.0f} s")
                restarts += 1
                child = None
                if target.cluster is not None and _ahead_of_new_leader(engine, log_file):
                    say(_realign(loaded, target, engine))
                if stop.wait(delay):
                    break
                delay = min(delay * 2, 60.0)
            if child is None:
                ready, upstream, waiting = _upstream(loaded, target, engine, say)
                if waiting and waiting != last_wait:  # once per reason, not every second
                    say(waiting)
                last_wait = waiting
                if ready:
                    child = engine.popen("receive-wal", engine.server, log_file=log_file)
                    say(f"receive-wal started (pid {child.pid}, slot {engine.slot_name}"
                        + (f", leader {upstream.member}" if upstream and upstream.member
                           else "") + ")")
                    started_child = time.monotonic()
            elif time.monotonic() - started_child > 60:
                delay = 1.0  # it has stayed up: the next failure restarts quickly again
            if time.monotonic() - last_archive >= physical.archive_interval:
                archive_now(engine)
                archive_runs += 1
                last_archive = time.monotonic()
                for line in timelines.news():
                    say(line)
                moved = leader_moved(target, upstream) if child is not None and upstream \
                    else None
                if moved and child is not None:
                    say(f"the leader is now {moved}: moving the receiver there")
                    _stop_child(child)
                    child, delay = None, 1.0
            stop.wait(min(1.0, physical.archive_interval))
            if max_runtime is not None and \
                    (dt.datetime.now(dt.UTC) - started).total_seconds() > max_runtime:
                break
    finally:
        if child is not None:
            _stop_child(child)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if shipper is not None:
            shipper.stop.set()
    archive_now(engine)
    for line in timelines.news():
        say(line)
    if shipper is not None:
        shipper.close()
    return StreamSummary(target.name, started, dt.datetime.now(dt.UTC), restarts, archive_runs)


def _stop_child(child: subprocess.Popen[str]) -> None:
    if child.poll() is not None:
        return
    os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _upstream(loaded: LoadedConfig, target: Target, engine: Engine,
              say: Callable[[str], None]) -> tuple[bool, Upstream | None, str | None]:
    """(ready to start the receiver, the leader it will stream from, why it waits). A single
    server is always ready; a cluster is once its leader is proven and Barman points there."""
    from aegisctl.errors import AegisError

    if target.cluster is None:
        return True, None, None
    try:
        upstream = follow_leader(loaded, target, engine, "backup wal stream")
    except AegisError as exc:
        return False, None, f"waiting for the cluster's leader: {exc.message}"
    assert upstream is not None
    if upstream.moved:
        say(f"following the new leader {upstream.member or '(libpq read-write)'} "
            f"(timeline {upstream.timeline})")
    if upstream.slot_created:
        say(f"created replication slot {engine.slot_name} on the new leader")
    return True, upstream, None


def _why_not_streaming(loaded: LoadedConfig, target: Target, engine: Engine,
                       log_file: Path) -> str:
    """Barman only says "Impossible to start WAL streaming. Check the log": say why."""
    from aegisctl.backup.physical.setup import replication_problem

    tail = _tail(log_file)
    if "Impossible to start WAL streaming" in tail:
        try:
            problem = replication_problem(loaded, target, engine)
        except Exception as exc:  # the probe must never stop the supervisor
            log.debug("replication probe failed: %s", exc)
            problem = None
        if problem:
            return problem
    return tail


# pg_receivewal's error when its position is on a branch the server never had.
NOT_IN_HISTORY = "is not in this server's history"


def _ahead_of_new_leader(engine: Engine, log_file: Path) -> bool:
    """After a failover the receiver may hold WAL the old leader wrote and the new one never
    received (asynchronous replication): it asks to resume inside that lost branch, which the
    new leader refuses, every time."""
    barman_log = engine.home / "log" / "barman.log"
    return any(NOT_IN_HISTORY in _tail(path, 40) for path in (log_file, barman_log))


def _realign(loaded: LoadedConfig, target: Target, engine: Engine) -> str:
    from aegisctl.backup.physical.ha import realign_receiver
    from aegisctl.errors import AegisError

    try:
        return realign_receiver(loaded, target, engine)
    except (AegisError, OSError) as exc:
        return f"cannot realign the receiver with the new leader yet: {exc}"
    except Exception as exc:  # psycopg's: the leader went away again; the next exit retries
        return f"cannot realign the receiver with the new leader yet: {exc}"


def _tail(path: Path, lines_wanted: int = 1) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    if lines_wanted > 1:
        return "\n".join(lines[-lines_wanted:])
    return lines[-1][:300] if lines else "no output"


def archive_now(engine: Engine) -> None:
    """Move completed streamed segments into the archive (Barman's archive-wal)."""
    done = engine.run("archive-wal", engine.server, what="archive streamed WAL", timeout=600,
                      check=False)
    if done.returncode != 0:
        log.warning("archive-wal failed: %s", (done.stderr or done.stdout).strip()[-300:])


def switch_and_archive(engine: Engine, timeout: float = 120) -> None:
    """Close the current WAL segment and wait until it is archived, so the latest moment is
    recoverable (the segment holding it would otherwise still be `.partial`)."""
    engine.run("switch-wal", "--force", "--archive", "--archive-timeout",
               str(int(timeout)), engine.server, what="switch and archive the current WAL",
               timeout=timeout + 60)


# ---------------------------------------------------------------------------------------------
# Status


@dataclass
class WalStatus:
    target: str
    slot: str
    slot_exists: bool
    streaming: bool
    streamer_state: str | None
    lag_bytes: int | None
    slot_retained_bytes: int | None
    slot_wal_status: str | None
    safe_wal_size: int | None
    last_archived_wal: str | None
    last_archived_at: dt.datetime | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    oldest_backup: str | None
    archived_wal_bytes: int
    problems: list[str]
    timeline: int | None = None  # the newest in the archive
    gaps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "slot": self.slot, "slot_exists": self.slot_exists,
            "streaming": self.streaming, "streamer_state": self.streamer_state,
            "lag_bytes": self.lag_bytes, "slot_retained_bytes": self.slot_retained_bytes,
            "slot_wal_status": self.slot_wal_status, "safe_wal_size": self.safe_wal_size,
            "last_archived_wal": self.last_archived_wal,
            "last_archived_at": self.last_archived_at,
            "recoverable_window": {"start": self.window_start, "end": self.window_end,
                                   "oldest_backup": self.oldest_backup},
            "archived_wal_bytes": self.archived_wal_bytes,
            "timeline": self.timeline, "wal_gaps": self.gaps,
            "problems": self.problems, "ok": self.ok,
        }

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields, Note

        def ts(value: dt.datetime | None) -> str:
            return value.isoformat(timespec="seconds") if value else "-"

        blocks: list[Block] = [Fields([
            ("target", self.target),
            ("streaming", ("yes" if self.streaming else "NO")
             + (f" ({self.streamer_state})" if self.streamer_state else "")),
            ("lag", "-" if self.lag_bytes is None else f"{self.lag_bytes} bytes"),
            ("slot", f"{self.slot}" + ("" if self.slot_exists else " (absent)")
             + (f", wal_status {self.slot_wal_status}" if self.slot_wal_status else "")),
            ("slot holds", "-" if self.slot_retained_bytes is None
             else f"{self.slot_retained_bytes} bytes of WAL"),
            ("last archived", f"{self.last_archived_wal or '-'} at {ts(self.last_archived_at)}"),
            ("archived WAL", f"{self.archived_wal_bytes} bytes"
             + (f", timeline {self.timeline}" if self.timeline else "")),
            ("recoverable", f"{ts(self.window_start)} .. {ts(self.window_end)}"
             + (f" (from backup {self.oldest_backup})" if self.oldest_backup else "")),
        ], title="WAL streaming")]
        blocks += [Note(f"problem: {p}", "red") for p in self.problems]
        return blocks


def wal_status(loaded: LoadedConfig, target: Target) -> WalStatus:
    from aegisctl.backup.physical.backups import list_physical, recoverable_window
    from aegisctl.backup.physical.timelines import archive_gaps, newest_timeline
    from aegisctl.db import connect

    engine = engine_for(loaded, target)
    physical = loaded.settings.backup.physical
    with connect(loaded, target, "backup wal status") as conn:
        row = conn.execute(
            "SELECT s.active, r.state, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), r.flush_lsn)::bigint, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, "
            "s.wal_status, s.safe_wal_size "
            "FROM pg_replication_slots s LEFT JOIN pg_stat_replication r "
            "ON r.pid = s.active_pid WHERE s.slot_name = %s", (engine.slot_name,)).fetchone()
    problems: list[str] = []
    wals = archived_wals(engine)
    last = max(wals, key=lambda w: w[0]) if wals else None
    backups = list_physical(engine) if engine.server_config.exists() else []
    window = recoverable_window(engine, backups, wals)
    status = WalStatus(
        target=target.name, slot=engine.slot_name, slot_exists=row is not None,
        streaming=bool(row and row[0] and row[1] == "streaming"),
        streamer_state=row[1] if row else None,
        lag_bytes=row[2] if row else None,
        slot_retained_bytes=row[3] if row else None,
        slot_wal_status=row[4] if row else None,
        safe_wal_size=row[5] if row else None,
        last_archived_wal=last[0] if last else None,
        last_archived_at=dt.datetime.fromtimestamp(last[2], dt.UTC) if last else None,
        window_start=window[0], window_end=window[1],
        oldest_backup=window[2], archived_wal_bytes=sum(w[1] for w in wals),
        problems=problems)
    names = [w[0] for w in wals]
    gaps = archive_gaps(engine, names)
    status.timeline = newest_timeline(names)
    status.gaps = [g.to_json() for g in gaps]
    for gap in gaps:
        problems.append(f"the WAL archive has a gap: {gap.describe()}; recovery cannot cross "
                        "it: backups that began before it recover only up to "
                        f"{gap.start_lsn}" + ("" if window[0] else "; take a full backup"))
    if row is None:
        problems.append(f"slot {engine.slot_name} does not exist (backup physical enable)")
    else:
        if not status.streaming:
            from aegisctl.backup.physical.setup import replication_problem

            problem = replication_problem(loaded, target, engine) \
                if engine.server_config.exists() else None
            problems.append(problem or
                            "WAL is not being streamed (start `aegisctl backup wal stream`)")
        if status.lag_bytes is not None and status.lag_bytes > physical.max_lag:
            problems.append(f"streaming lags {status.lag_bytes} bytes "
                            f"(backup.physical.max_lag {physical.max_lag})")
        if status.slot_retained_bytes is not None and \
                status.slot_retained_bytes > physical.max_slot_retained:
            problems.append(f"the slot holds back {status.slot_retained_bytes} bytes of WAL "
                            f"(backup.physical.max_slot_retained {physical.max_slot_retained})")
        if status.slot_wal_status == "lost":
            problems.append("the slot lost WAL (max_slot_wal_keep_size exceeded): a new full "
                            "backup starts a new recoverable window")
    return status
