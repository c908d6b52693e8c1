"""Physical backups: create (full or incremental), the catalog, chains, the recoverable window.

The catalog is Barman's `meta/<id>-backup.info` files (key=value text), read as input: each
value is validated before it steers anything. aegisctl's own facts about a backup (verified,
drilled) live beside them in `aegisctl/<server>/state.json`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.engine import Engine, engine_for, last_line, write_file
from aegisctl.errors import OperationFailed, UsageError

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target

log = logging.getLogger(__name__)

BACKUP_ID = re.compile(r"^\d{8}T\d{6}$")
_WAL_NAME = re.compile(r"^[0-9A-F]{24}$")
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def first_unsummarized(summaries: list[tuple[int, int]], begin: int,
                       summarized: int) -> int | None:
    """The first LSN between `begin` (a parent backup's start) and `summarized` (how far the
    server's WAL summarizer got) that no WAL summary covers, or None when the summaries cover
    that whole range without a gap (what an incremental on that parent needs). Summaries are
    (start, end) LSN ranges, end exclusive."""
    reach = begin
    for start, end in sorted(summaries):
        if reach >= summarized:
            break
        if end <= reach:
            continue
        if start > reach:
            return reach
        reach = end
    return reach if reach < summarized else None


def wal_position(name: str) -> tuple[int, int]:
    """(timeline, segment number) of a WAL file name (16 MB segments)."""
    return int(name[:8], 16), int(name[8:16], 16) * 0x100 + int(name[16:24], 16)


def last_gap(wals: list[tuple[str, int, float]], engine: Engine | None = None) -> str | None:
    """The first segment after the newest gap in the archive, or None when it is
    continuous across its timelines (see timelines.py; `engine` reads the history files).
    Recovery cannot replay across a gap: the window starts after it."""
    from aegisctl.backup.physical.timelines import Timeline, segment_name, timeline_chain, wal_gaps

    names = [w[0] for w in wals]
    chain = timeline_chain(engine, names) if engine is not None else []
    if not chain:
        from aegisctl.backup.physical.timelines import newest_timeline

        newest = newest_timeline(names)
        chain = [Timeline(newest, 0)] if newest else []
    gaps = wal_gaps(names, chain)
    if not gaps:
        return None
    after = gaps[-1].last + 1
    on = max((t for t in chain if t.begin_segment <= after), key=lambda t: t.id)
    return segment_name(on.id, after)


@dataclass
class PhysicalBackup:
    id: str
    type: str  # full | incremental
    parent: str | None
    status: str  # Barman's: DONE, FAILED, WAITING_FOR_WALS, STARTED...
    begin_time: dt.datetime | None
    end_time: dt.datetime | None
    size: int
    chain: str = ""  # id of the chain's full backup
    children: list[str] = field(default_factory=list)
    verified: str = "unverified"  # good | bad | unverified (pg_verifybackup through Barman)
    summarize_wal: bool = False
    timeline: int | None = None
    begin_wal: str | None = None
    begin_lsn: str | None = None  # where recovery from it starts (its checkpoint's redo)

    @property
    def usable(self) -> bool:
        return self.status == "DONE"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": "physical", "type": self.type, "parent": self.parent,
                "chain": self.chain, "children": self.children, "status": self.status,
                "begin_time": self.begin_time, "end_time": self.end_time, "size": self.size,
                "verified": self.verified, "timeline": self.timeline,
                "begin_lsn": self.begin_lsn}


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value or value == "None":
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _read_info(path: Path) -> dict[str, str]:
    info: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _state(engine: Engine) -> dict[str, Any]:
    try:
        data = json.loads((engine.state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(engine: Engine, update: dict[str, Any]) -> None:
    data = _state(engine)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    write_file(engine, engine.state_dir / "state.json", json.dumps(data, indent=1, default=str))


def load_state(engine: Engine) -> dict[str, Any]:
    return _state(engine)


def list_physical(engine: Engine) -> list[PhysicalBackup]:
    """Every backup in Barman's catalog for this server, oldest first, with its chain."""
    meta = engine.server_dir / "meta"
    verified = _state(engine).get("verified", {})
    backups: dict[str, PhysicalBackup] = {}
    try:
        entries = sorted(meta.glob("*-backup.info"))
    except OSError:
        entries = []
    for path in entries:
        backup_id = path.name.removesuffix("-backup.info")
        if not BACKUP_ID.match(backup_id):
            continue
        info = _read_info(path)
        parent = info.get("parent_backup_id")
        parent = parent if parent and BACKUP_ID.match(parent) else None
        try:
            size = int(info.get("size", "0"))
        except ValueError:
            size = 0
        try:
            timeline = int(info.get("timeline", ""))
        except ValueError:
            timeline = None
        state = verified.get(backup_id) if isinstance(verified, dict) else None
        backups[backup_id] = PhysicalBackup(
            id=backup_id, type="incremental" if parent else "full", parent=parent,
            status=info.get("status", "UNKNOWN"), begin_time=_parse_time(info.get("begin_time")),
            end_time=_parse_time(info.get("end_time")), size=size,
            verified=state if state in ("good", "bad") else "unverified",
            summarize_wal=info.get("summarize_wal") == "on", timeline=timeline,
            begin_wal=info.get("begin_wal") if _WAL_NAME.match(info.get("begin_wal", ""))
            else None,
            begin_lsn=info.get("begin_xlog") if _LSN.match(info.get("begin_xlog", ""))
            else None)
    for backup in backups.values():
        root, seen = backup, {backup.id}
        while root.parent and root.parent in backups and root.parent not in seen:
            seen.add(root.parent)
            root = backups[root.parent]
        backup.chain = root.id if root.type == "full" else ""  # "" = parent missing: broken
        if backup.parent in backups:
            backups[backup.parent].children.append(backup.id)
    return sorted(backups.values(), key=lambda b: b.id)


def chain_usable(backup: PhysicalBackup, by_id: dict[str, PhysicalBackup]) -> bool:
    """Every member from the full backup down to this one is DONE."""
    node: PhysicalBackup | None = backup
    while node is not None:
        if not node.usable:
            return False
        if node.parent is None:
            return node.type == "full"
        node = by_id.get(node.parent)
    return False


def recoverable_window(engine: Engine, backups: list[PhysicalBackup],
                       wals: list[tuple[str, int, float]]
                       ) -> tuple[dt.datetime | None, dt.datetime | None, str | None]:
    """(start, end, oldest usable backup): from the end of the oldest usable backup to the
    newest archived WAL (a `.partial` segment still being streamed is not recoverable yet)."""
    by_id = {b.id: b for b in backups}
    usable = [b for b in backups if b.end_time and chain_usable(b, by_id)]
    gap = last_gap(wals, engine)
    if gap is not None:
        # By segment number: a backup on a later timeline still starts after the gap.
        usable = [b for b in usable
                  if b.begin_wal and wal_position(b.begin_wal)[1] >= wal_position(gap)[1]]
    if not usable:
        return None, None, None
    oldest = min(usable, key=lambda b: b.end_time or dt.datetime.max.replace(tzinfo=dt.UTC))
    newest_end = max(b.end_time for b in usable if b.end_time)
    end = newest_end
    if wals:
        end = max(end, dt.datetime.fromtimestamp(max(w[2] for w in wals), dt.UTC))
    return oldest.end_time, end, oldest.id


# ---------------------------------------------------------------------------------------------
# Create


@dataclass
class PhysicalCreateResult:
    backup: PhysicalBackup
    duration_seconds: float
    verify_problem: str | None = None
    full_reason: str | None = None  # an incremental was asked for; why this one is full

    def to_json(self) -> dict[str, Any]:
        return {**self.backup.to_json(), "duration_seconds": round(self.duration_seconds, 3),
                "verify_problem": self.verify_problem,
                "full_instead_of_incremental": self.full_reason}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields, Note

        b = self.backup
        blocks: list[Block] = [Fields([
            ("id", b.id), ("type", b.type + (f" (parent {b.parent})" if b.parent else "")),
            ("chain", b.chain), ("status", b.status), ("size", f"{b.size} bytes"),
            ("end", b.end_time), ("verified", b.verified),
            ("duration", f"{self.duration_seconds:.1f} s"),
        ], title="physical backup created")]
        if self.full_reason:
            blocks.append(Note(f"full instead of incremental: {self.full_reason}", "yellow"))
        if self.verify_problem:
            blocks.append(Note(f"verify: {self.verify_problem}", "red"))
        return blocks


@dataclass
class _Summaries:
    enabled: bool  # summarize_wal
    keep_seconds: float  # wal_summary_keep_time (0: kept forever)
    ranges: list[tuple[int, int]] | None  # None: the server would not tell (no privilege)
    summarized: int | None  # how far the summarizer got


def _server_summaries(loaded: LoadedConfig, target: Target) -> _Summaries:
    import psycopg

    from aegisctl.db import connect

    with connect(loaded, target, "backup create --physical", needs="direct") as conn:
        row = conn.execute(
            "SELECT current_setting('summarize_wal')::bool, "
            "(SELECT setting::float * 60 FROM pg_settings WHERE name = 'wal_summary_keep_time')"
        ).fetchone()
        assert row is not None
        result = _Summaries(bool(row[0]), float(row[1] or 0), None, None)
        try:
            with conn.transaction():
                # Listing the files and the summarizer's progress: both superuser-only by
                # default; without them only the age check below is possible.
                result.ranges = [
                    (parse_lsn(str(a)), parse_lsn(str(b))) for a, b in conn.execute(
                        "SELECT start_lsn, end_lsn FROM pg_available_wal_summaries()")]
                state = conn.execute(
                    "SELECT summarized_lsn FROM pg_get_wal_summarizer_state()").fetchone()
                result.summarized = parse_lsn(str(state[0])) if state and state[0] else None
        except psycopg.errors.InsufficientPrivilege:
            log.info("cannot list the server's WAL summaries: only their age is checked")
            result.ranges = None
    return result


def _check_parent_summaries(chosen: PhysicalBackup, summaries: _Summaries) -> None:
    """Refuse a parent the server's WAL summaries no longer cover from its start: the server
    would refuse the incremental anyway, after the checkpoint, with a long message."""
    age = dt.datetime.now(dt.UTC) - (chosen.begin_time or dt.datetime.now(dt.UTC))
    keep = summaries.keep_seconds
    if keep > 0 and age.total_seconds() > keep:
        why = (f"it is {_days(age.total_seconds())} old and the server keeps summaries "
               f"{_days(keep)} (wal_summary_keep_time)")
    else:
        why = (f"it is {_days(age.total_seconds())} old, within wal_summary_keep_time "
               f"({_days(keep) if keep > 0 else 'forever'}): summarize_wal was off for a "
               "while, or summary files were removed")
    hint = "take a full backup: aegisctl backup create --physical"
    if summaries.ranges is not None and summaries.summarized is not None and chosen.begin_lsn:
        begin = parse_lsn(chosen.begin_lsn)
        missing = first_unsummarized(summaries.ranges, begin, summaries.summarized)
        if missing is not None:
            raise UsageError(
                f"parent {chosen.id} cannot be the base of an incremental: the server has no "
                f"WAL summary from {format_lsn(missing)} (the parent starts at "
                f"{chosen.begin_lsn}); {why}", hint=hint)
        return
    if keep > 0 and age.total_seconds() > keep:
        raise UsageError(f"parent {chosen.id} cannot be the base of an incremental: {why}",
                         hint=hint)


def _days(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _require_streaming(loaded: LoadedConfig, target: Target, engine: Engine) -> None:
    from aegisctl.db import connect

    with connect(loaded, target, "backup create --physical", needs="direct") as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                           (engine.slot_name,)).fetchone()
    if row is None:
        raise OperationFailed(f"replication slot {engine.slot_name} does not exist",
                              hint="aegisctl backup physical enable")
    if not row[0]:
        from aegisctl.backup.physical.setup import replication_problem

        problem = replication_problem(loaded, target, engine)
        if problem:
            raise OperationFailed(f"WAL streaming is not running: {problem}")
        raise OperationFailed("WAL streaming is not running: a base backup without the WAL "
                              "written during it cannot be restored",
                              hint="start `aegisctl backup wal stream` (or its unit) first")


def _wait_for_a_free_id(existing: set[str]) -> None:
    """Barman names a backup after the second it starts, in local time: a backup started in
    the same second as the previous one (a small database backs up in under a second) would
    take its id and overwrite its record. Wait for the next second in that case."""
    import time

    for _ in range(3):
        if dt.datetime.now().strftime("%Y%m%dT%H%M%S") not in existing:
            return
        time.sleep(1.01 - time.time() % 1.0)


def create_physical(loaded: LoadedConfig, target: Target, *, incremental: bool = False,
                    parent: str | None = None, verify: bool = True,
                    wait_timeout: float = 600) -> PhysicalCreateResult:
    import time

    engine = engine_for(loaded, target)
    if not engine.server_config.exists():
        raise UsageError(f"physical backups are not enabled for '{target.name}'",
                         hint="aegisctl backup physical enable")
    from aegisctl.backup.physical.ha import point_at_leader

    point_at_leader(loaded, target, engine, "backup create --physical")
    _require_streaming(loaded, target, engine)
    before = {b.id: b for b in list_physical(engine)}
    args = ["backup", "--wait", "--wait-timeout", str(int(wait_timeout))]
    full_reason: str | None = None
    if incremental or parent:
        summaries = _server_summaries(loaded, target)
        if not summaries.enabled:
            raise UsageError("an incremental backup needs summarize_wal = on on the server",
                             hint="aegisctl backup physical enable")
        usable = [b for b in before.values() if chain_usable(b, before)]
        if parent is not None:
            if not BACKUP_ID.match(parent) or parent not in before:
                raise UsageError(f"no physical backup {parent!r} to be the parent")
            chosen = before[parent]
            if chosen not in usable:
                raise UsageError(f"backup {parent} cannot be a parent: its chain is not "
                                 f"complete ({chosen.status})")
        elif not usable:
            raise UsageError("no full physical backup to build an incremental on",
                             hint="aegisctl backup create --physical")
        else:
            from aegisctl.backup.physical.timelines import chain_break, current_timeline

            chosen = usable[-1]
            # After a failover (or WAL lost from the archive) the chain cannot go on: the
            # scheduled incremental becomes a full backup, saying why.
            full_reason = chain_break(engine, chosen, current_timeline(loaded, target))
        if full_reason is None:
            if not chosen.summarize_wal:
                raise UsageError(f"backup {chosen.id} was taken without summarize_wal: it "
                                 "cannot be a parent; take a full backup")
            _check_parent_summaries(chosen, summaries)
            args += ["--incremental", chosen.id]
        else:
            log.warning("taking a full backup instead of an incremental: %s", full_reason)
    args.append(engine.server)
    _wait_for_a_free_id(set(before))
    started = time.monotonic()
    done = engine.run(*args, what="take a physical backup", timeout=None, check=False)
    duration = time.monotonic() - started
    after = list_physical(engine)
    new = [b for b in after if b.id not in before]
    if not new:
        raise OperationFailed(f"the physical backup failed: {engine.explain(done)}")
    backup = new[-1]
    if done.returncode != 0 or not backup.usable:
        raise OperationFailed(f"physical backup {backup.id} ended {backup.status}: "
                              f"{engine.explain(done)}")
    result = PhysicalCreateResult(backup, duration, full_reason=full_reason)
    if verify:
        result.verify_problem = verify_physical(engine, backup)
    return result


def verify_physical(engine: Engine, backup: PhysicalBackup) -> str | None:
    """pg_verifybackup through Barman; the result is recorded. None when good."""
    done = engine.run("verify-backup", engine.server, backup.id, what="verify the backup",
                      timeout=None, check=False)
    problem = None if done.returncode == 0 else last_line(done)
    backup.verified = "good" if problem is None else "bad"
    save_state(engine, {"verified": {backup.id: backup.verified}})
    return problem


# ---------------------------------------------------------------------------------------------
# Listing (for `backup list`)


@dataclass
class PhysicalListing:
    target: str
    backups: list[PhysicalBackup]
    window_start: dt.datetime | None
    window_end: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "backups": [b.to_json() for b in self.backups],
                "recoverable_window": {"start": self.window_start, "end": self.window_end}}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        blocks: list[Block] = [Table(
            [Column("id", "id"), "type", Column("parent", "id"), Column("chain", "id"),
             "status", Column("size", "number"), "end", "verified"],
            [(b.id, b.type, b.parent or "", b.chain or "(broken)", b.status, b.size,
              b.end_time, b.verified) for b in self.backups],
            title=f"physical backups of {self.target}", empty="no physical backups")]
        if self.window_start:
            blocks.append(Note(f"recoverable window: {self.window_start.isoformat()} .. "
                               f"{self.window_end.isoformat() if self.window_end else '-'}"))
        return blocks


def physical_listing(loaded: LoadedConfig, target: Target) -> PhysicalListing:
    from aegisctl.backup.physical.walfiles import archived_wals

    engine = engine_for(loaded, target)
    backups = list_physical(engine)
    start, end, _ = recoverable_window(engine, backups, archived_wals(engine))
    return PhysicalListing(target.name, backups, start, end)


def newest_backup_age(engine: Engine) -> float | None:
    usable = [b for b in list_physical(engine) if b.usable and b.end_time]
    if not usable:
        return None
    newest = max(b.end_time for b in usable if b.end_time)
    return (dt.datetime.now(dt.UTC) - newest).total_seconds()
