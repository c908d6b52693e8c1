"""`backup list`: every backup-like object of a target, local and remote, with an honest state.

Each entry has a `type` ("logical": pg_dump archives with a manifest; other kinds of backup
add their own entries through `ENTRY_SOURCES`) and a `state`: ok, missing files (a file the
manifest lists is gone or has another size), no manifest (a dump whose manifest was lost, or
an upload that never finished), manifest unreadable (malformed, hostile or from a newer
aegisctl: reported, never acted on).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.backup.manifest import BackupManifest, format_time, utcnow
from aegisctl.backup.store import OK, BackupStore, StoredBackup
from aegisctl.config import LoadedConfig
from aegisctl.errors import AegisError
from aegisctl.targets import Target

if TYPE_CHECKING:
    from aegisctl.backup.remote import RemoteBackup
    from aegisctl.output import Block


@dataclass
class ListedBackup:
    id: str
    type: str  # logical (pg_dump); other kinds of backup add their own
    state: str  # ok | missing files | no manifest | manifest unreadable
    label: str | None
    location: str  # local | remote | local+remote
    created_at: str
    age_seconds: int
    size: int
    format: str | None
    encrypted: bool
    verified: str  # ok | failed | unverified
    verified_at: str | None
    verify_level: str | None
    restore_tested_at: str | None
    # uploaded | pending | missing (the manifest says uploaded, the store has nothing) |
    # unknown (uploaded, but the store was not asked or could not be reached) | no
    uploaded: str
    pinned: bool
    problems: list[str] = field(default_factory=list)
    remote_problem: str | None = None  # the remote copy is missing or damaged

    @property
    def good(self) -> bool:
        """Counts as a good backup: verified ok and every file still where it was."""
        return self.verified == "ok" and self.state == OK


@dataclass
class BackupListing:
    target: str
    directory: str
    backups: list[ListedBackup]
    newest_good: str | None
    newest_good_age_seconds: int | None
    max_age_seconds: int
    stale: bool
    remote_error: str | None = None

    @property
    def problems(self) -> list[str]:
        found = [f"{b.id}: {b.state}" + (f" ({'; '.join(b.problems)})" if b.problems else "")
                 for b in self.backups if b.state != OK]
        found += [f"{b.id}: {b.remote_problem}" for b in self.backups if b.remote_problem]
        if self.remote_error:
            found.append(f"remote not listed: {self.remote_error}")
        return found

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = self.problems
        return data

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        rows: list[Sequence[Any]] = [(b.id, b.type, b.state, human_age(b.age_seconds), human_size(b.size),
                 (b.format or "-") + (" (encrypted)" if b.encrypted else ""),
                 b.verified + (f" ({b.verify_level})" if b.verify_level else ""), b.uploaded,
                 b.location, "yes" if b.pinned else "", b.label or "")
                for b in self.backups]
        blocks: list[Block] = [Table(
            [Column("id", "id"), "type", "state", Column("age", "number"),
             Column("size", "number"), "format", "verified", "uploaded", "where", "pinned",
             Column("label", "text")], rows,
            title=f"backups of {self.target} ({self.directory})", empty="no backups yet")]
        for b in self.backups:
            for problem in b.problems:
                blocks.append(Note(f"{b.id}: {problem}"))
        return blocks


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def human_age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit}"
    return f"{seconds}s"


def _entry(manifest: BackupManifest | None, backup_id: str, created: dt.datetime, state: str,
           problems: list[str], size: int, now: dt.datetime) -> ListedBackup:
    m = manifest
    verified = m.verified if m else "unverified"
    return ListedBackup(
        id=backup_id, type="logical", state=state, label=m.label if m else None,
        location="local", created_at=format_time(created),
        age_seconds=int((now - created).total_seconds()), size=m.size if m else size,
        format=m.format if m else None, encrypted=bool(m and m.encryption),
        verified=verified, verified_at=m.verification.at if m and m.verification else None,
        verify_level=m.verification.level if m and m.verification else None,
        restore_tested_at=restore_tested_at(m) if m else None,
        uploaded=("pending" if m and m.remote.status == "pending" else
                  "unknown" if m and m.remote.status == "uploaded" else "no"),
        pinned=bool(m and m.pinned), problems=list(problems),
        remote_problem=_recorded_remote_problem(m))


def _recorded_remote_problem(m: BackupManifest | None) -> str | None:
    """What the last `verify --remote` found wrong, while the copy is not sent again."""
    check = m.remote_check if m else None
    if m is None or check is None or check.status == "ok" or m.remote.status != "pending":
        return None
    return (f"remote copy {check.status} (verify --remote at {check.at}: "
            f"{'; '.join(check.problems[:3])}); aegisctl backup upload --pending sends it again")


def restore_tested_at(manifest: BackupManifest) -> str | None:
    """When this backup last passed a restore test."""
    for record in (manifest.restore_test, manifest.verification):
        if record is not None and record.level == "restore-test" and record.status == "ok":
            return record.at
    return None


def _disk_size(store: BackupStore, entry: StoredBackup) -> int:
    total = 0
    for name in entry.names:
        path = store.folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                total += sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
            else:
                total += path.lstat().st_size
        except OSError:
            continue
    return total


def logical_entries(loaded: LoadedConfig, target: Target, *, remote: bool,
                    now: dt.datetime) -> tuple[list[ListedBackup], str | None]:
    """The pg_dump backups of the target, local and (when asked) remote, merged by id."""
    store = BackupStore(loaded.settings.backup, target.name)
    rows: dict[str, ListedBackup] = {}
    for entry in store.scan():
        rows[entry.id] = _entry(entry.manifest, entry.id, entry.created, entry.state,
                                entry.problems, _disk_size(store, entry), now)
    remote_error = None
    if remote and loaded.settings.backup.remote is not None:
        try:
            groups = _remote_groups(loaded, target)
        except AegisError as exc:
            groups, remote_error = [], exc.message
        for group in groups:
            _merge_remote(rows, group, now)
        if remote_error is None:
            where = f"s3://{loaded.settings.backup.remote.bucket}/" \
                    f"{loaded.settings.backup.remote.prefix}{target.name}/"
            for row in rows.values():
                if row.uploaded == "unknown":  # uploaded, says the manifest; nothing there
                    row.uploaded = "missing"
                    row.remote_problem = (f"remote copy missing: nothing under {where}{row.id}/ "
                                          "(aegisctl backup upload --pending sends it again)")
    return sorted(rows.values(), key=lambda r: (r.created_at, r.id)), remote_error


def _remote_groups(loaded: LoadedConfig, target: Target) -> list[RemoteBackup]:
    from aegisctl.backup.remote import open_remote, scan_remote

    return scan_remote(open_remote(loaded.settings.backup.remote, target.name))


def _merge_remote(rows: dict[str, ListedBackup], group: RemoteBackup,
                  now: dt.datetime) -> None:
    remote_problems = [f"remote: {p}" for p in group.problems]
    row = rows.get(group.id)
    if row is None:
        row = _entry(group.manifest, group.id, group.created, group.state, [],
                     sum(group.keys.values()), now)
        row.location = "remote"
        row.uploaded = "uploaded" if group.state == OK else "no"
        row.problems = remote_problems
        rows[group.id] = row
        return
    row.location = "local+remote"
    row.problems += remote_problems
    if group.state == OK:
        # A copy `verify --remote` found damaged looks whole to a listing: still pending.
        row.uploaded = "pending" if row.remote_problem else "uploaded"
    else:
        # A partial remote copy (an upload killed midway) says nothing about the local files:
        # the row's state stays what they are, and the upload is pending.
        row.problems.append(f"remote: the copy is incomplete ({group.state}); "
                            "`backup upload --pending` sends it again")
        if row.uploaded == "no":
            row.uploaded = "pending"
        elif row.uploaded == "unknown":  # the manifest says uploaded; the copy is not whole
            row.uploaded = "missing"
            row.remote_problem = (f"remote copy missing: incomplete ({group.state}); "
                                  "aegisctl backup upload --pending sends it again")


EntrySource = Callable[[LoadedConfig, Target, bool, dt.datetime],
                       tuple[list[ListedBackup], str | None]]


def _logical_source(loaded: LoadedConfig, target: Target, remote: bool,
                    now: dt.datetime) -> tuple[list[ListedBackup], str | None]:
    return logical_entries(loaded, target, remote=remote, now=now)


# Every kind of backup `backup list` shows: (loaded, target, remote?, now) -> (entries, remote
# error). Another kind (physical backups, say) appends its own source here.
ENTRY_SOURCES: list[EntrySource] = [_logical_source]


def list_backups(loaded: LoadedConfig, target: Target, *, remote: bool = True,
                 now: dt.datetime | None = None) -> BackupListing:
    now = now or utcnow()
    rows: list[ListedBackup] = []
    errors: list[str] = []
    for source in ENTRY_SOURCES:
        found, error = source(loaded, target, remote, now)
        rows += found
        if error:
            errors.append(error)
    rows.sort(key=lambda r: (r.created_at, r.id))
    good = [r for r in rows if r.good]
    newest = good[-1] if good else None
    max_age = int(loaded.settings.backup.max_age)
    store = BackupStore(loaded.settings.backup, target.name)
    return BackupListing(
        target=target.name, directory=str(store.folder), backups=rows,
        newest_good=newest.id if newest else None,
        newest_good_age_seconds=newest.age_seconds if newest else None,
        max_age_seconds=max_age, stale=newest is None or newest.age_seconds > max_age,
        remote_error="; ".join(errors) or None)
