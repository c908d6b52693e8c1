"""Physical backups off the machine: the layout of base backups and WAL in the `backup.remote`
store, and reading it back (the remote catalogue and its recoverable window).

aegisctl uploads Barman's own files with its own uploader rather than running Barman's cloud
tools: those would take a second copy from the server (barman-cloud-backup), encrypt only on
the server side or with GPG, and know nothing of the AES-256-GCM key, per-object SHA-256
checks, Object Lock and pending queue the logical backups use. So every object here is
encrypted with `backup.encryption`'s key before it leaves the machine (aegisctl.backup.crypto:
the key id in each header tells a wrong key from a damaged object), sent with a SHA-256
checksum and checked by HEAD after upload (backup.remote._upload_file).

Objects, under <backup.remote.prefix><target>/physical/<system identifier>/:

    base/<backup id>/vol-00000.tar.enc ...   the backup's Barman folder as a tar stream, cut
                                              into volumes of backup.physical.remote.volume_size
    base/<backup id>/manifest.json.enc        written last: what the backup is, its volumes
    wal/<segment>.enc                         one archived WAL file (metadata: archived-at)

Everything read from the bucket is input: names are matched against strict patterns, and a
manifest is validated field by field before it steers a download or a delete.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.backups import BACKUP_ID, PhysicalBackup, chain_usable
from aegisctl.errors import ConfigError, OperationFailed

if TYPE_CHECKING:
    from aegisctl.backup.crypto import BackupKey
    from aegisctl.backup.physical.settings import PhysicalRemoteSettings
    from aegisctl.backup.remote import Remote
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target

FORMAT = "aegisctl-physical-remote/1"
MANIFEST = "manifest.json.enc"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
VOLUME = re.compile(r"^vol-(\d{5})\.tar\.enc$")
SYSTEM_ID = re.compile(r"^[1-9][0-9]{0,19}$")
WAL_NAME = re.compile(r"^(?:[0-9A-F]{24}|[0-9A-F]{8}\.history|[0-9A-F]{24}\.[0-9A-F]{8}\.backup)$")
SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Offsite:
    """The remote store, the key and the database system whose physical backups these are."""

    remote: Remote
    key: BackupKey
    system_id: str
    settings: PhysicalRemoteSettings

    @property
    def base(self) -> str:
        return f"{self.remote.prefix()}physical/{self.system_id}/"

    def backup_prefix(self, backup_id: str) -> str:
        return f"{self.base}base/{backup_id}/"

    def wal_key(self, name: str) -> str:
        return f"{self.base}wal/{name}.enc"

    @property
    def bucket(self) -> str:
        return str(self.remote.settings.bucket)


def require_key(loaded: LoadedConfig) -> BackupKey:
    """The backup key: physical backups never go to the store unencrypted."""
    from aegisctl.backup.crypto import load_key

    key = load_key(loaded.settings.backup.encryption)
    if key is None:
        raise ConfigError("physical backups go to the remote store encrypted only, and "
                          "backup.encryption is not set",
                          hint="aegisctl backup key-generate FILE, then set "
                               "backup.encryption.key_file (the key of the logical backups)")
    return key


def remote_configured(loaded: LoadedConfig) -> bool:
    backup = loaded.settings.backup
    return backup.remote is not None and backup.physical.remote.upload


def open_offsite(loaded: LoadedConfig, target: Target, system_id: str) -> Offsite:
    from aegisctl.backup.remote import open_remote

    if not SYSTEM_ID.match(system_id):
        raise OperationFailed(f"{system_id!r} is not a database system identifier")
    if loaded.settings.backup.remote is None:
        raise ConfigError("no remote store configured", hint="set backup.remote.bucket")
    if not loaded.settings.backup.physical.remote.upload:
        raise ConfigError("backup.physical.remote.upload is off: physical backups are not "
                          "sent to the remote store")
    key = require_key(loaded)
    remote = open_remote(loaded.settings.backup.remote, target.name)
    return Offsite(remote, key, system_id, loaded.settings.backup.physical.remote)


def remote_systems(loaded: LoadedConfig, target: Target) -> list[str]:
    """The database systems that have physical backups in the store for this target."""
    from aegisctl.backup.remote import open_remote, remote_errors

    remote = open_remote(loaded.settings.backup.remote, target.name)
    base = f"{remote.prefix()}physical/"
    found = []
    with remote_errors("listing remote physical backups", remote.settings.bucket):
        pages = remote.client.get_paginator("list_objects_v2").paginate(
            Bucket=remote.settings.bucket, Prefix=base, Delimiter="/")
        for page in pages:
            for entry in page.get("CommonPrefixes", []):
                name = str(entry.get("Prefix", ""))[len(base):].rstrip("/")
                if SYSTEM_ID.match(name):
                    found.append(name)
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# Encrypted small objects (manifests)


def put_encrypted_json(offsite: Offsite, key: str, data: dict[str, Any]) -> None:
    from aegisctl.backup.crypto import EncryptingWriter
    from aegisctl.backup.remote import _extra_args

    sink = io.BytesIO()
    writer = EncryptingWriter(sink, offsite.key)
    writer.write(json.dumps(data, indent=1, default=str).encode())
    writer.close()
    body = sink.getvalue()
    import hashlib

    extra = _extra_args(offsite.remote.settings, hashlib.sha256(body).hexdigest())
    offsite.remote.client.put_object(Bucket=offsite.bucket, Key=key, Body=body,
                                     ContentType="application/octet-stream", **extra)


def get_encrypted_json(offsite: Offsite, key: str, what: str) -> dict[str, Any]:
    from aegisctl.backup.crypto import decrypt_stream

    obj = offsite.remote.client.get_object(Bucket=offsite.bucket, Key=key)
    if int(obj.get("ContentLength") or 0) > MAX_MANIFEST_BYTES:
        raise OperationFailed(f"{what} is too large to be one of ours")
    body = obj["Body"].read(MAX_MANIFEST_BYTES + 1)
    plain = b"".join(decrypt_stream(io.BytesIO(body), offsite.key, what))
    try:
        data = json.loads(plain)
    except ValueError:
        raise OperationFailed(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise OperationFailed(f"{what} is not a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# The remote manifest of one base backup


@dataclass
class Volume:
    name: str
    size: int  # ciphertext bytes (the object)
    sha256: str  # of the ciphertext
    plain_size: int
    plain_sha256: str
    checksum: str = ""  # the store's, recorded at upload (backup.remote.recorded_checksum)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RemoteManifest:
    id: str
    parent: str | None
    begin_wal: str
    end_wal: str
    begin_time: dt.datetime
    end_time: dt.datetime
    timeline: int
    size: int  # Barman's size of the backup (plaintext)
    volumes: list[Volume]
    uploaded_at: str
    object_lock_until: str | None = None
    begin_lsn: str | None = None
    summarize_wal: bool = False
    database: str | None = None  # the target's database, for the drill's checks
    superuser: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)
    tablespaces: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **{k: v for k, v in self.__dict__.items() if k != "volumes"},
                "volumes": [v.to_json() for v in self.volumes]}

    def backup(self) -> PhysicalBackup:
        return PhysicalBackup(
            id=self.id, type="incremental" if self.parent else "full", parent=self.parent,
            status="DONE", begin_time=self.begin_time, end_time=self.end_time, size=self.size,
            verified="good", summarize_wal=self.summarize_wal, timeline=self.timeline,
            begin_wal=self.begin_wal, begin_lsn=self.begin_lsn)


def _str(data: dict[str, Any], name: str, pattern: re.Pattern[str] | None = None,
         optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
        raise OperationFailed(f"field {name!r} is missing or malformed")
    return value


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise OperationFailed(f"field {name!r} is not a count")
    return value


def _time(data: dict[str, Any], name: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(_str(data, name))
    except ValueError:
        raise OperationFailed(f"field {name!r} is not a time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_manifest(data: dict[str, Any], backup_id: str) -> RemoteManifest:
    """A remote manifest, validated: raises OperationFailed naming the bad field."""
    if data.get("format") != FORMAT:
        raise OperationFailed(f"unknown format {data.get('format')!r}")
    if data.get("id") != backup_id:
        raise OperationFailed(f"it names backup {data.get('id')!r}, not {backup_id}")
    volumes = []
    raw = data.get("volumes")
    if not isinstance(raw, list) or not raw:
        raise OperationFailed("it lists no volumes")
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise OperationFailed("a volume entry is not an object")
        name = _str(item, "name", VOLUME)
        if int(VOLUME.match(name).group(1)) != index:  # type: ignore[union-attr]
            raise OperationFailed(f"volume {name} is out of order")
        volumes.append(Volume(name, _int(item, "size"), _str(item, "sha256", _SHA),
                              _int(item, "plain_size"), _str(item, "plain_sha256", _SHA),
                              str(item.get("checksum") or "")))
    extensions = data.get("extensions") or {}
    if not isinstance(extensions, dict):
        raise OperationFailed("field 'extensions' is not an object")
    return RemoteManifest(
        id=backup_id, parent=_str(data, "parent", BACKUP_ID, optional=True),
        begin_wal=_str(data, "begin_wal", SEGMENT), end_wal=_str(data, "end_wal", SEGMENT),
        begin_time=_time(data, "begin_time"), end_time=_time(data, "end_time"),
        timeline=_int(data, "timeline"), size=_int(data, "size"), volumes=volumes,
        uploaded_at=str(data.get("uploaded_at") or ""),
        object_lock_until=_str(data, "object_lock_until", optional=True),
        begin_lsn=_str(data, "begin_lsn", optional=True),
        summarize_wal=data.get("summarize_wal") is True,
        database=_str(data, "database", optional=True),
        superuser=_str(data, "superuser", optional=True),
        extensions={str(k): str(v) for k, v in extensions.items()},
        tablespaces=data.get("tablespaces") is True)


# ---------------------------------------------------------------------------------------------
# The remote catalogue


@dataclass
class RemoteEntry:
    id: str
    keys: dict[str, int]  # key -> size
    manifest: RemoteManifest | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems


@dataclass
class RemoteCatalog:
    system_id: str
    entries: list[RemoteEntry]
    wals: dict[str, int]  # WAL file name -> object size
    wal_modified: dict[str, dt.datetime] = field(default_factory=dict)  # when it was stored

    def usable(self) -> list[RemoteManifest]:
        return [e.manifest for e in self.entries if e.ok and e.manifest is not None]

    def backups(self) -> list[PhysicalBackup]:
        """Every complete remote backup, with chains resolved (a missing parent: broken)."""
        found = {m.id: m.backup() for m in self.usable()}
        for backup in found.values():
            node, seen = backup, {backup.id}
            while node.parent and node.parent in found and node.parent not in seen:
                seen.add(node.parent)
                node = found[node.parent]
            backup.chain = node.id if node.type == "full" else ""
            if backup.parent in found:
                found[backup.parent].children.append(backup.id)
        return sorted(found.values(), key=lambda b: b.id)


def read_catalog(offsite: Offsite) -> RemoteCatalog:
    """One listing of the system's prefix, then every backup's manifest (decrypted, checked)."""
    from aegisctl.backup.remote import remote_errors

    entries: dict[str, RemoteEntry] = {}
    wals: dict[str, int] = {}
    modified: dict[str, dt.datetime] = {}
    with remote_errors("listing remote physical backups", offsite.bucket):
        pages = offsite.remote.client.get_paginator("list_objects_v2").paginate(
            Bucket=offsite.bucket, Prefix=offsite.base)
        for page in pages:
            for obj in page.get("Contents", []):
                key, size = str(obj["Key"]), int(obj.get("Size", 0))
                rest = key[len(offsite.base):].split("/")
                if len(rest) == 3 and rest[0] == "base" and BACKUP_ID.match(rest[1]):
                    entries.setdefault(rest[1], RemoteEntry(rest[1], {})).keys[key] = size
                elif len(rest) == 2 and rest[0] == "wal" and rest[1].endswith(".enc") \
                        and WAL_NAME.match(rest[1][:-4]):
                    wals[rest[1][:-4]] = size
                    if isinstance(obj.get("LastModified"), dt.datetime):
                        modified[rest[1][:-4]] = obj["LastModified"]
        for entry in entries.values():
            prefix = offsite.backup_prefix(entry.id)
            if prefix + MANIFEST not in entry.keys:
                entry.problems.append("no manifest: an upload that did not finish")
                continue
            try:
                data = get_encrypted_json(offsite, prefix + MANIFEST,
                                          f"remote manifest of physical backup {entry.id}")
                entry.manifest = parse_manifest(data, entry.id)
            except OperationFailed as exc:
                entry.problems.append(f"manifest unusable: {exc.message}")
                continue
            for volume in entry.manifest.volumes:
                stored = entry.keys.get(prefix + volume.name)
                if stored is None:
                    entry.problems.append(f"{volume.name}: missing")
                elif stored != volume.size:
                    entry.problems.append(f"{volume.name}: size {stored}, manifest says "
                                          f"{volume.size}")
    return RemoteCatalog(offsite.system_id, sorted(entries.values(), key=lambda e: e.id), wals,
                         modified)


def segment_number(name: str) -> int:
    """The position of a WAL segment in the stream, whatever its timeline."""
    return int(name[8:16], 16) * 0x100 + int(name[16:24], 16)


def contiguous_from(segments: list[str], first: str) -> list[str]:
    """The segments from `first` on without a gap (a timeline switch continues the stream at
    the same position), `first` included; empty when `first` is not there."""
    ordered = sorted(s for s in segments if SEGMENT.match(s))
    if first not in ordered:
        return []
    out = [first]
    for name in ordered[ordered.index(first) + 1:]:
        previous = segment_number(out[-1])
        current = segment_number(name)
        if current == previous + 1 or (current == previous and name[:8] != out[-1][:8]):
            out.append(name)
        elif current > previous + 1:
            break
    return out


@dataclass
class RemoteWindow:
    """What the store alone can restore: from the end of the oldest remote backup whose chain
    and WAL are all there, to the newest WAL segment in one run after it."""

    start: dt.datetime | None
    end: dt.datetime | None
    oldest_backup: str | None
    newest_wal: str | None
    restorable: list[str]  # backup ids restorable from the store alone

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "oldest_backup": self.oldest_backup,
                "newest_wal": self.newest_wal, "restorable": self.restorable}


def restorable(catalog: RemoteCatalog) -> list[tuple[PhysicalBackup, list[str]]]:
    """(backup, the WAL run from its start) of every backup restorable from the store alone:
    its chain complete there, and its WAL from begin to end without a gap."""
    backups = catalog.backups()
    by_id = {b.id: b for b in backups}
    manifests = {m.id: m for m in catalog.usable()}
    out = []
    for backup in backups:
        manifest = manifests[backup.id]
        if not chain_usable(backup, by_id) or not backup.begin_wal:
            continue
        run = contiguous_from(list(catalog.wals), backup.begin_wal)
        if manifest.end_wal in run:
            out.append((backup, run))
    return out


def remote_window(offsite: Offsite, catalog: RemoteCatalog) -> RemoteWindow:
    found = restorable(catalog)
    if not found:
        return RemoteWindow(None, None, None, None, [])
    never = dt.datetime.max.replace(tzinfo=dt.UTC)
    oldest = min((b for b, _ in found), key=lambda b: b.end_time or never)
    newest_wal = max((r[-1] for _, r in found), key=segment_number)
    end = wal_archived_at(offsite, newest_wal)
    newest_end = max(b.end_time for b, _ in found if b.end_time)
    return RemoteWindow(oldest.end_time, max(end, newest_end) if end else newest_end,
                        oldest.id, newest_wal, [b.id for b, _ in found])


def wal_archived_at(offsite: Offsite, name: str) -> dt.datetime | None:
    """When the local archive received this segment (recorded at upload in its metadata)."""
    from aegisctl.backup.remote import remote_errors

    with remote_errors("reading remote WAL", offsite.bucket):
        head = offsite.remote.client.head_object(Bucket=offsite.bucket,
                                                 Key=offsite.wal_key(name))
    return parse_archived_at(head.get("Metadata", {}).get("archived-at"))


def parse_archived_at(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# ---------------------------------------------------------------------------------------------
# What `backup wal status` and `backup list` show


@dataclass
class RemoteSummary:
    system_id: str
    bucket: str
    prefix: str
    backups: list[PhysicalBackup]
    incomplete: dict[str, list[str]]  # backup id -> what is wrong with its remote copy
    window: RemoteWindow
    wal_files: int
    wal_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"system_id": self.system_id, "bucket": self.bucket, "prefix": self.prefix,
                "backups": [b.to_json() for b in self.backups], "incomplete": self.incomplete,
                "recoverable_window": self.window.to_json(), "wal_files": self.wal_files,
                "wal_bytes": self.wal_bytes}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        def ts(value: dt.datetime | None) -> str:
            return value.isoformat(timespec="seconds") if value else "-"

        restorable_ids = set(self.window.restorable)
        blocks: list[Block] = [Table(
            [Column("id", "id"), "type", Column("parent", "id"), Column("size", "number"),
             "end", "restorable from the store"],
            [(b.id, b.type, b.parent or "", b.size, b.end_time,
              "yes" if b.id in restorable_ids else "no (chain or WAL incomplete)")
             for b in self.backups],
            title=f"remote physical backups (s3://{self.bucket}/{self.prefix})",
            empty="no physical backups in the remote store")]
        blocks += [Note(f"remote backup {i} incomplete: {'; '.join(p[:3])}", "yellow")
                   for i, p in self.incomplete.items()]
        blocks.append(Note(f"remote recoverable window: {ts(self.window.start)} .. "
                           f"{ts(self.window.end)} ({self.wal_files} WAL file(s), "
                           f"{self.wal_bytes} bytes)"))
        return blocks


def remote_summary(offsite: Offsite) -> RemoteSummary:
    catalog = read_catalog(offsite)
    return RemoteSummary(
        offsite.system_id, offsite.bucket, offsite.base, catalog.backups(),
        {e.id: e.problems for e in catalog.entries if e.problems},
        remote_window(offsite, catalog), len(catalog.wals), sum(catalog.wals.values()))
