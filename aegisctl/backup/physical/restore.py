"""Physical restore (Barman's `recover`, which combines an incremental chain itself) and the
restore drill: restore into a temporary directory, start it on a free port as the server's
user, wait for promotion, check it, stop it and delete it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.backups import (
    BACKUP_ID,
    PhysicalBackup,
    chain_usable,
    list_physical,
    recoverable_window,
    save_state,
)
from aegisctl.backup.physical.engine import Engine, engine_for
from aegisctl.backup.physical.ha import point_at_leader
from aegisctl.backup.physical.wal import switch_and_archive
from aegisctl.backup.physical.walfiles import archived_wals
from aegisctl.errors import MissingBinary, OperationFailed, UsageError

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import LoadedConfig
    from aegisctl.memory.replay import ReplayResult
    from aegisctl.output import Block
    from aegisctl.targets import Target


@dataclass
class RestorePlan:
    backup: PhysicalBackup
    chain: list[str]
    target_dir: Path
    to_time: dt.datetime | None
    to_lsn: str | None
    window: tuple[dt.datetime | None, dt.datetime | None]

    def describe(self) -> list[str]:
        point = (f"to {self.to_time.isoformat()}" if self.to_time else
                 f"to LSN {self.to_lsn}" if self.to_lsn else "to the end of the archived WAL")
        return [f"restore physical backup {self.backup.id} ({self.backup.type}, chain "
                f"{' -> '.join(self.chain)}) into {self.target_dir}, {point}"]


@dataclass
class RestoreResult:
    backup: str
    chain: list[str]
    target_dir: str
    to_time: dt.datetime | None
    to_lsn: str | None
    duration_seconds: float
    owner: str | None
    erasures: ReplayResult | None = None  # the erasure ledger's replay (forget_replay)

    def to_json(self) -> dict[str, Any]:
        return {"backup": self.backup, "chain": self.chain, "target_dir": self.target_dir,
                "to_time": self.to_time, "to_lsn": self.to_lsn,
                "duration_seconds": round(self.duration_seconds, 3), "owner": self.owner,
                "erasures": self.erasures.to_json() if self.erasures else None}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields, Note

        return [Fields([("backup", self.backup), ("chain", " -> ".join(self.chain)),
                        ("directory", self.target_dir),
                        ("recovery target", self.to_time or self.to_lsn or "end of WAL"),
                        ("owner", self.owner or "current user"),
                        ("duration", f"{self.duration_seconds:.1f} s")],
                       title="physical backup restored"),
                *(self.erasures.to_view() if self.erasures else []),
                Note("start it with pg_ctl -D DIR start (as its owner)"
                     + (": it was started once to replay the erasure ledger, and is promoted"
                        if self.erasures and self.erasures.ledger_entries else
                        ": it replays WAL to the target, then promotes"))]


def parse_time(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--to-time {value!r} is not an ISO 8601 timestamp",
                         hint="e.g. 2026-01-31T14:05:00+00:00 (UTC when no offset)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _chain(backup: PhysicalBackup, by_id: dict[str, PhysicalBackup]) -> list[str]:
    out, node = [], backup
    while True:
        out.append(node.id)
        if node.parent is None:
            break
        node = by_id[node.parent]
    return list(reversed(out))


def _check_target_dir(path: Path) -> Path:
    """Empty (or to be created), or holding an interrupted restore's own leftovers."""
    from aegisctl.backup.physical.restore_dir import check_empty_or_ours

    path = path.expanduser().absolute()
    if not path.exists() and not path.parent.is_dir():
        raise UsageError(f"--target-dir {path}: its parent folder does not exist")
    check_empty_or_ours(path)
    return path


def _check_reachable(engine: Engine, path: Path) -> None:
    """As root, Barman and the restored server run as an unprivileged user: it must be able to
    enter every folder on the way (we never widen permissions we did not set)."""
    import stat

    ids = engine.server_ids()
    if ids is None:
        return
    blocked = None
    for folder in [*reversed(path.parents)]:
        info = folder.stat()
        if not (info.st_mode & stat.S_IXOTH or (info.st_uid == ids[0]
                                                and info.st_mode & stat.S_IXUSR)):
            blocked = folder
            break
    if blocked is not None:
        raise UsageError(f"user '{engine.run_as}' (restored servers run as it) cannot enter "
                         f"{blocked} on the way to {path}",
                         hint="pick a --target-dir under a folder others can enter, "
                         "e.g. /var/lib/aegisctl/restore")


def plan_restore(loaded: LoadedConfig, target: Target, *, backup_id: str | None,
                 latest: bool, to_time: dt.datetime | None, to_lsn: str | None,
                 target_dir: Path, refresh_wal: bool = True) -> RestorePlan:
    engine = engine_for(loaded, target)
    if to_time and to_lsn:
        raise UsageError("give --to-time or --to-lsn, not both")
    if to_lsn and not re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", to_lsn):
        raise UsageError(f"--to-lsn {to_lsn!r} is not an LSN (like 0/1A2B3C4D)")
    if backup_id and latest:
        raise UsageError("give a backup ID or --latest, not both")
    if backup_id and not BACKUP_ID.match(backup_id):
        raise UsageError(f"{backup_id!r} is not a physical backup id (like 20260131T020000)")
    target_dir = _check_target_dir(target_dir)
    _check_reachable(engine, target_dir)
    if to_time and refresh_wal:
        # The segment holding a recent target may still be .partial: close and archive it.
        point_at_leader(loaded, target, engine, "backup restore --physical", required=False)
        with contextlib.suppress(OperationFailed):
            switch_and_archive(engine)
    backups = list_physical(engine)
    by_id = {b.id: b for b in backups}
    start, end, _ = recoverable_window(engine, backups, archived_wals(engine))
    if to_time is not None and (start is None or end is None or not start <= to_time <= end):
        window = (f"{start.isoformat()} .. {end.isoformat()}" if start and end
                  else "empty: no usable physical backup")
        raise UsageError(f"--to-time {to_time.isoformat()} is outside the recoverable "
                         f"window ({window})")
    if backup_id:
        if backup_id not in by_id:
            raise UsageError(f"no physical backup {backup_id} for target '{target.name}'")
        backup = by_id[backup_id]
        if not chain_usable(backup, by_id):
            raise OperationFailed(f"backup {backup_id} cannot be restored: its chain is not "
                                  "complete")
        if to_time and backup.end_time and to_time < backup.end_time:
            raise UsageError(f"--to-time {to_time.isoformat()} is before backup {backup_id} "
                             f"ended ({backup.end_time.isoformat()}): pick an older backup")
    else:
        candidates = [b for b in backups if chain_usable(b, by_id) and b.end_time
                      and (to_time is None or b.end_time <= to_time)]
        if not candidates:
            raise UsageError(f"no usable physical backup for target '{target.name}'"
                             + (" before --to-time" if to_time else ""))
        backup = candidates[-1]
    return RestorePlan(backup, _chain(backup, by_id), target_dir, to_time, to_lsn, (start, end))


def run_restore(loaded: LoadedConfig, target: Target, plan: RestorePlan,
                replay_ledger: bool = True) -> RestoreResult:
    """Barman's recover into the target folder; then (`replay_ledger`, not for the drill,
    which replays into the copy it starts) the erasure ledger's replay."""
    from aegisctl.backup.physical import forget_replay

    engine = engine_for(loaded, target)
    if shutil.which("rsync") is None:
        raise MissingBinary("Barman's recover needs rsync, which is not installed",
                            hint="apt-get install rsync")
    # Read and validated before anything is touched: a damaged copy stops the restore here.
    ledger = forget_replay.newest_ledger(loaded, target) if replay_ledger else None
    result = _recover(loaded, target, plan, engine)
    if ledger is not None:
        result.erasures = forget_replay.replay_restored_dir(
            engine, plan.target_dir, loaded.settings.backup.physical.drill_timeout, *ledger)
    return result


def _recover(loaded: LoadedConfig, target: Target, plan: RestorePlan,
             engine: Engine) -> RestoreResult:
    from aegisctl.backup.physical import restore_dir
    from aegisctl.testhooks import pause_at

    started = time.monotonic()
    _check_target_dir(plan.target_dir)
    point_at_leader(loaded, target, engine, "backup restore --physical", required=False)
    target_dir = plan.target_dir
    point = {"backup": plan.backup.id, "to_time": plan.to_time.isoformat()
             if plan.to_time else None, "to_lsn": plan.to_lsn}
    marker = restore_dir.leftovers(target_dir) if target_dir.exists() else None
    if marker is not None and marker.get("phase") == "moving" and \
            {k: marker.get(k) for k in point} == point:
        # The same restore was killed while moving its finished files into place: finish.
        restore_dir.write_marker(target_dir, {**marker, "pid": os.getpid()})
        restore_dir.move_up(target_dir)
        return _finish(engine, plan, started)
    if marker is not None:
        restore_dir.clean(target_dir)  # an interrupted restore's own leftovers, not resumable
    created = not target_dir.exists()
    target_dir.mkdir(mode=0o700, exist_ok=True)
    ids = engine.ids()
    if ids:
        os.chown(target_dir, *ids)
    restore_dir.write_marker(target_dir, {**point, "pid": os.getpid(), "phase": "recovering",
                                          "at": dt.datetime.now(dt.UTC).isoformat()})
    staging = target_dir / restore_dir.STAGING
    staging.mkdir(mode=0o700)
    if ids:
        os.chown(staging, *ids)
    args = ["recover"]
    if plan.to_time:
        args += ["--target-time", plan.to_time.isoformat(), "--target-action", "promote"]
    elif plan.to_lsn:
        args += ["--target-lsn", plan.to_lsn, "--target-action", "promote"]
    args += _across_timelines(engine, plan.backup)
    args += [engine.server, plan.backup.id, str(staging)]
    try:
        engine.run(*args, what=f"restore backup {plan.backup.id}", timeout=None)
    except BaseException:
        _empty_dir(plan.target_dir, remove=created)
        raise
    pause_at("physical restore: recovered")
    restore_dir.write_marker(target_dir, {**point, "pid": os.getpid(), "phase": "moving"})
    restore_dir.move_up(target_dir)
    return _finish(engine, plan, started)


def _across_timelines(engine: Engine, backup: PhysicalBackup) -> list[str]:
    """After a promotion (a cluster's failover) the archive goes on on a newer timeline.
    Without --target-tli, Barman copies only the WAL of the backup's own timeline (even for a
    --target-time), and recovery would end at the switch: ask for the newest one, as
    PostgreSQL's recovery_target_timeline = latest does."""
    from aegisctl.backup.physical.timelines import newest_timeline

    newest = newest_timeline([w[0] for w in archived_wals(engine)])
    if newest is not None and backup.timeline is not None and newest > backup.timeline:
        return ["--target-tli", "latest"]
    return []


def _finish(engine: Engine, plan: RestorePlan, started: float) -> RestoreResult:
    owner = engine.server_ids()
    if owner:
        _chown_tree(plan.target_dir, owner)
    return RestoreResult(plan.backup.id, plan.chain, str(plan.target_dir), plan.to_time,
                         plan.to_lsn, time.monotonic() - started, engine.run_as)


def _chown_tree(root: Path, ids: tuple[int, int]) -> None:
    os.chown(root, *ids)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), *ids, follow_symlinks=False)


def _empty_dir(path: Path, *, remove: bool) -> None:
    if remove:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


# ---------------------------------------------------------------------------------------------
# The drill


@dataclass
class DrillCheck:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class DrillReport:
    target: str
    backup: str
    chain: list[str]
    to_time: dt.datetime | None
    started_at: dt.datetime
    restore_seconds: float = 0.0
    promote_seconds: float = 0.0
    total_seconds: float = 0.0
    port: int | None = None
    checks: list[DrillCheck] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    log_errors: list[str] = field(default_factory=list)
    erasures: ReplayResult | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "backup": self.backup, "chain": self.chain,
                "to_time": self.to_time, "started_at": self.started_at, "ok": self.ok,
                "restore_seconds": round(self.restore_seconds, 3),
                "promote_seconds": round(self.promote_seconds, 3),
                "total_seconds": round(self.total_seconds, 3), "port": self.port,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                           for c in self.checks],
                "row_counts": self.row_counts, "log_errors": self.log_errors,
                "erasures": self.erasures.to_json() if self.erasures else None}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields, Note, Table

        blocks: list[Block] = [
            Fields([("target", self.target), ("backup", " -> ".join(self.chain)),
                    ("recovery target", self.to_time or "end of WAL"),
                    ("restore", f"{self.restore_seconds:.1f} s"),
                    ("promotion", f"{self.promote_seconds:.1f} s"),
                    ("total", f"{self.total_seconds:.1f} s"),
                    ("result", "PASSED" if self.ok else "FAILED")], title="physical drill"),
            Table(["check", "result", "detail"],
                  [(c.name, "ok" if c.ok else "FAILED", c.detail) for c in self.checks]),
        ]
        blocks += [Note(f"server log: {line}", "red") for line in self.log_errors]
        return blocks


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Scratch:
    """A restored data directory started as the server's user on a private socket."""

    def __init__(self, engine: Engine, data_dir: Path, timeout: float,
                 superuser: str = "postgres") -> None:
        self.engine = engine
        self.data_dir = data_dir
        self.timeout = timeout
        self.superuser = superuser  # the restored cluster's bootstrap superuser
        self.port = _free_port()
        self.socket_dir = Path(tempfile.mkdtemp(prefix="aegisctl-drill-"))
        # The source's pg_hba.conf is restored too, and it may allow nothing on a local socket
        # (an external server reached over TCP): the copy uses its own, trusting only its
        # private socket (0700, no TCP).
        self.hba_file = self.socket_dir / "pg_hba.conf"
        self.hba_file.write_text("local all all trust\n")
        self.ids = engine.server_ids()
        if self.ids:
            os.chown(self.socket_dir, *self.ids)
            os.chown(self.hba_file, *self.ids)
        self.log = data_dir / "aegisctl-drill.log"

    def _pg(self, *argv: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.engine.bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True,
            user=self.ids[0] if self.ids else None, group=self.ids[1] if self.ids else None,
            extra_groups=[] if self.ids else None, cwd="/", timeout=timeout or self.timeout)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses='' "
                   f"-c hba_file={self.hba_file} "
                   "-c archive_mode=off -c summarize_wal=off")
        done = self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-w", "-t",
                        str(int(self.timeout)), "-o", options, "start")
        if done.returncode != 0:
            raise OperationFailed("the restored server did not start: "
                                  + ("; ".join(self.log_errors()[-3:]) or done.stderr.strip()))

    def log_errors(self) -> list[str]:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [ln.strip() for ln in lines if "FATAL" in ln or "PANIC" in ln][-10:]

    def conninfo(self, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=str(self.socket_dir), port=str(self.port), user=self.superuser,
                             dbname=dbname, application_name="aegisctl backup drill")

    def wait_promoted(self) -> None:
        import psycopg

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=5) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row and not row[0]:
                        return
            except psycopg.OperationalError:
                # A server whose recovery failed is gone (its postmaster.pid with it): say so
                # now rather than after the whole timeout.
                if not (self.data_dir / "postmaster.pid").exists():
                    raise OperationFailed(
                        "the restored server stopped during recovery: "
                        + ("; ".join(self.log_errors()[-3:]) or "no FATAL in its log")
                    ) from None
            time.sleep(0.5)
        raise OperationFailed(f"the restored server was not promoted within "
                              f"{self.timeout:.0f} s: "
                              + ("; ".join(self.log_errors()[-3:]) or "no FATAL in its log"))

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "60",
                 "stop", timeout=90)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


@contextlib.contextmanager
def _drill_dir(engine: Engine) -> Iterator[Path]:
    base = engine.make_dir(engine.home / "drills", 0o700)
    owner = engine.server_ids()
    if owner:
        os.chown(base, *owner)
    path = Path(tempfile.mkdtemp(prefix=f"{engine.server}-", dir=base))
    path.rmdir()  # Barman creates it
    try:
        yield path
    finally:
        if path.parent == base:  # delete only what is proven to be ours
            shutil.rmtree(path, ignore_errors=True)


def run_drill(loaded: LoadedConfig, target: Target, *, backup_id: str | None = None,
              to_time: dt.datetime | None = None,
              expected_counts: dict[str, int] | None = None) -> DrillReport:
    """Restore, start, promote, check, stop, delete; recorded as the last drill."""
    from aegisctl.backup.physical import forget_replay
    from aegisctl.db import connect

    engine = engine_for(loaded, target)
    physical = loaded.settings.backup.physical
    # Read and validated before anything runs; replayed into the started copy.
    ledger, _ = forget_replay.newest_ledger(loaded, target)
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    with connect(loaded, target, "backup drill", needs="direct") as conn:
        database, superuser = conn.execute(
            "SELECT current_database(), (SELECT rolname FROM pg_roles WHERE oid = 10)"
        ).fetchone()  # type: ignore[misc]
        source_ext: dict[str, str] = dict(conn.execute(
            "SELECT extname, extversion FROM pg_extension").fetchall())
        if to_time is None and expected_counts is None:
            point_at_leader(loaded, target, engine, "backup drill", required=False)
            with contextlib.suppress(OperationFailed):
                switch_and_archive(engine)
            expected_counts = _row_counts(conn)
    with _drill_dir(engine) as data_dir:
        plan = plan_restore(loaded, target, backup_id=backup_id, latest=backup_id is None,
                            to_time=to_time, to_lsn=None, target_dir=data_dir,
                            refresh_wal=to_time is not None)
        report = DrillReport(target.name, plan.backup.id, plan.chain, to_time, started_at)
        try:
            run_restore(loaded, target, plan, replay_ledger=False)
            report.restore_seconds = time.monotonic() - t0
            scratch = _Scratch(engine, data_dir, physical.drill_timeout, str(superuser))
            report.port = scratch.port
            t1 = time.monotonic()
            try:
                scratch.start()
                scratch.wait_promoted()
                report.promote_seconds = time.monotonic() - t1
                report.checks.append(DrillCheck("promoted", True, "read-write after recovery"))
                _check_restored(scratch, database, source_ext, expected_counts, report)
                _replay_ledger(scratch, database, ledger, report)
            finally:
                report.log_errors = scratch.log_errors()
                scratch.stop()
        except OperationFailed as exc:
            report.checks.append(DrillCheck("restore", False, exc.message))
    report.total_seconds = time.monotonic() - t0
    if report.ok:
        save_state(engine, {"last_drill": {"at": report.started_at.isoformat(),
                                           "backup": report.backup,
                                           "seconds": round(report.total_seconds, 1)}})
    save_state(engine, {"last_drill_attempt": {"at": report.started_at.isoformat(),
                                               "ok": report.ok}})
    return report


def _replay_ledger(scratch: _Scratch, database: str, ledger: Any, report: DrillReport) -> None:
    """The erasure ledger replayed into the drill's copy, as every restore does."""
    import psycopg

    from aegisctl.backup.physical.forget_replay import replay_into

    try:
        with psycopg.connect(scratch.conninfo(database)) as conn:
            report.erasures = replay_into(conn, ledger)
    except psycopg.Error as exc:
        report.checks.append(DrillCheck("erasure ledger", False,
                                        str(exc).strip().splitlines()[0][:300]))
        return
    report.checks.append(DrillCheck("erasure ledger", True, report.erasures.line()))


def _row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    from psycopg import sql

    tables = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2").fetchall()
    counts = {}
    for schema, name in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(name))).fetchone()
        counts[f"{schema}.{name}"] = int(row[0]) if row else 0
    return counts


_VECTOR_OPS = {"vector_l2_ops": "<->", "vector_cosine_ops": "<=>", "vector_ip_ops": "<#>",
               "halfvec_l2_ops": "<->", "halfvec_cosine_ops": "<=>", "halfvec_ip_ops": "<#>"}


def _check_restored(scratch: _Scratch, database: str, source_ext: dict[str, str],
                    expected: dict[str, int] | None, report: DrillReport) -> None:
    import psycopg

    amcheck = scratch._pg("pg_amcheck", "--all", "--install-missing", "-h",
                          str(scratch.socket_dir), "-p", str(scratch.port), "-U", scratch.superuser,
                          timeout=3600)
    report.checks.append(DrillCheck(
        "pg_amcheck", amcheck.returncode == 0,
        "heap and B-tree indexes of every database" if amcheck.returncode == 0
        else (amcheck.stdout + amcheck.stderr).strip().splitlines()[-1][:300]))
    with psycopg.connect(scratch.conninfo(database), autocommit=True) as conn:
        restored_ext: dict[str, str] = dict(conn.execute("SELECT extname, extversion FROM pg_extension"
                                         " WHERE extname <> 'amcheck'").fetchall())
        wanted = {k: v for k, v in source_ext.items() if k != "amcheck"}
        report.checks.append(DrillCheck(
            "extensions", restored_ext == wanted,
            ", ".join(f"{k} {v}" for k, v in sorted(restored_ext.items()))
            if restored_ext == wanted else f"source {wanted}, restored {restored_ext}"))
        report.row_counts = _row_counts(conn)
        if expected is not None:
            diff = {t: (n, report.row_counts.get(t)) for t, n in expected.items()
                    if report.row_counts.get(t) != n}
            report.checks.append(DrillCheck(
                "row counts", not diff,
                f"{len(expected)} tables match the source" if not diff
                else "; ".join(f"{t}: expected {a}, restored {b}" for t, (a, b) in
                               list(diff.items())[:5])))
        _check_vector_indexes(conn, report)


def _check_vector_indexes(conn: psycopg.Connection[Any], report: DrillReport) -> None:
    from psycopg import sql

    rows = conn.execute(
        "SELECT n.nspname, t.relname, i.relname, a.attname, am.amname, oc.opcname, "
        "x.indisvalid AND x.indisready "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_am am ON am.oid = i.relam JOIN pg_opclass oc ON oc.oid = x.indclass[0] "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0] "
        "WHERE am.amname IN ('hnsw', 'ivfflat') ORDER BY 1, 2, 3").fetchall()
    if not rows:
        report.checks.append(DrillCheck("vector indexes", True, "none in this database"))
        return
    for schema, table, index, column, am, opclass, valid in rows:
        name = f"{am} {schema}.{index}"
        if not valid:
            report.checks.append(DrillCheck(name, False, "index is not valid"))
            continue
        op = _VECTOR_OPS.get(opclass)
        if op is None:
            report.checks.append(DrillCheck(name, True, f"valid (opclass {opclass} not probed)"))
            continue
        col, tab = sql.Identifier(column), sql.Identifier(schema, table)
        query = sql.SQL(
            "SELECT 1 FROM {tab} ORDER BY {col} " + op +
            " (SELECT {col} FROM {tab} WHERE {col} IS NOT NULL LIMIT 1) LIMIT 5"
        ).format(tab=tab, col=col)
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in conn.execute(
                sql.SQL("EXPLAIN ") + query).fetchall())
            found = len(conn.execute(query).fetchall())
        used = index in plan
        report.checks.append(DrillCheck(
            name, used, f"valid, used by a nearest-neighbour query ({found} rows)" if used
            else "valid, but the nearest-neighbour query did not use it"))
