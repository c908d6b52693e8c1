"""The JSON manifest written beside every backup: what it holds and what we know about it.

It never contains a secret: no password, no key (only a key's fingerprint), no DSN.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MANIFEST_VERSION = 1


@dataclass
class BackupFile:
    path: str  # relative to the target's backup folder
    size: int
    sha256: str


@dataclass
class TableCount:
    schema: str
    name: str
    rows: int
    exact: bool  # False: pg_class.reltuples estimate (large table)


@dataclass
class Verification:
    status: str  # ok | failed
    level: str  # checksum | list | restore-test
    at: str
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


@dataclass
class RemoteState:
    status: str = "none"  # none | pending | uploaded
    bucket: str | None = None
    key_prefix: str | None = None
    uploaded_at: str | None = None
    error: str | None = None
    object_lock_until: str | None = None


@dataclass
class BackupManifest:
    id: str
    target: str
    database: str
    format: str  # custom | directory
    started_at: str
    finished_at: str
    duration_seconds: float
    server_version: str
    server_version_num: int
    pg_dump_version: str
    pg_dump_path: str
    pg_dump_source: str  # config | PATH | embedded
    compress: str
    jobs: int
    files: list[BackupFile]
    size: int
    sha256: str  # of the archive file; for a directory, of its sorted "sha256  path" lines
    label: str | None = None
    schema_version: str | None = None
    vector_columns: dict[str, int] = field(default_factory=dict)  # "schema.table.column" -> dim
    tables: list[TableCount] = field(default_factory=list)
    globals_file: BackupFile | None = None
    encryption: dict[str, Any] | None = None  # {"algorithm", "key_id", "chunk_size"}
    verification: Verification | None = None
    remote: RemoteState = field(default_factory=RemoteState)
    pinned: bool = False
    pinned_at: str | None = None
    aegisctl_version: str = ""
    manifest_version: int = MANIFEST_VERSION

    @property
    def created(self) -> dt.datetime:
        return parse_time(self.finished_at)

    @property
    def verified(self) -> str:
        return self.verification.status if self.verification else "unverified"

    @property
    def good(self) -> bool:
        """Verified good: the only kind that counts toward min_keep."""
        return self.verification is not None and self.verification.status == "ok"

    @property
    def archive(self) -> BackupFile:
        """The custom archive (custom format) or the first file (directory format)."""
        return self.files[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupManifest:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["files"] = [BackupFile(**f) for f in data.get("files", [])]
        values["tables"] = [TableCount(**t) for t in data.get("tables", [])]
        if data.get("globals_file"):
            values["globals_file"] = BackupFile(**data["globals_file"])
        if data.get("verification"):
            values["verification"] = Verification(**data["verification"])
        values["remote"] = RemoteState(**(data.get("remote") or {}))
        return cls(**values)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
