"""The JSON manifest written beside every backup: what it holds and what we know about it.

It never contains a secret: no password, no key (only a key's fingerprint), no DSN.

A manifest is input (a local file anyone with access to the folder can edit, a remote object
anyone with write access to the bucket can replace): `load_manifest` is the one loader, and
it proves types, the manifest version, the id and every file path (relative, normalised, and
named after the backup's own id, so it can only name the backup's own files) before any
command acts on it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aegisctl.errors import OperationFailed

MANIFEST_VERSION = 1
BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z(-\d{1,6})?$")
# The top-level names a backup may own, after its id: archive, folder, globals.
OWN_SUFFIXES = (".dump", ".dump.enc", ".dir", ".globals.sql", ".globals.sql.enc")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(OperationFailed):
    """A manifest that cannot be trusted: reported, never acted on."""


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
    status: str  # ok | failed (interrupted: only in `interrupted_check`)
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
class RemoteCheck:
    """The last check of the remote copy (`backup verify --remote`): every object there, of
    the size and with the checksums recorded at upload (`deep`: downloaded and hashed)."""

    status: str  # ok | missing | damaged
    level: str  # head | deep
    at: str
    problems: list[str] = field(default_factory=list)


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
    # The last restore test, kept when a later quick verify replaces `verification`.
    restore_test: Verification | None = None
    # The last check that could not run to completion (killed, connection lost): it says
    # nothing about the backup, so `verification` stays as it was.
    interrupted_check: Verification | None = None
    remote: RemoteState = field(default_factory=RemoteState)
    # The store's own checksum of each uploaded file, as HEAD reported it right after the
    # upload ("sha256:<base64>", or "etag:<etag>" from a store without checksums).
    remote_checksums: dict[str, str] = field(default_factory=dict)
    remote_check: RemoteCheck | None = None
    pinned: bool = False
    pinned_at: str | None = None
    # The dumped cluster's system identifier (pg_control_system()): tells apart the backups of
    # two databases sharing one folder (systems.py). None in older manifests.
    system_id: str | None = None
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

    @property
    def all_files(self) -> list[BackupFile]:
        return list(self.files) + ([self.globals_file] if self.globals_file else [])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupManifest:
        """Unchecked: only for data this process wrote. Input goes through load_manifest."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["files"] = [BackupFile(**f) for f in data.get("files", [])]
        values["tables"] = [TableCount(**t) for t in data.get("tables", [])]
        if data.get("globals_file"):
            values["globals_file"] = BackupFile(**data["globals_file"])
        if data.get("verification"):
            values["verification"] = Verification(**data["verification"])
        if data.get("restore_test"):
            values["restore_test"] = Verification(**data["restore_test"])
        if data.get("interrupted_check"):
            values["interrupted_check"] = Verification(**data["interrupted_check"])
        values["remote"] = RemoteState(**(data.get("remote") or {}))
        if data.get("remote_check"):
            values["remote_check"] = RemoteCheck(**data["remote_check"])
        return cls(**values)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the one loader for manifests read from disk or from a bucket ---------------------------


def check_file_path(backup_id: str, path: str, fmt: str, *, globals_file: bool = False) -> str:
    """A file path a manifest may hold: relative to the target's folder, normalised, naming
    only this backup's own archive, folder member or globals file. Raises ManifestError."""
    if not isinstance(path, str) or not path:
        raise ManifestError("a file path is empty or not a string")
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or "\x00" in path \
            or any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"file path {path!r} is not a plain relative path")
    if globals_file:
        allowed = {f"{backup_id}.globals.sql", f"{backup_id}.globals.sql.enc"}
        if len(parts) != 1 or parts[0] not in allowed:
            raise ManifestError(f"globals file path {path!r} is not this backup's own")
        return path
    if fmt == "custom":
        if len(parts) != 1 or parts[0] not in (f"{backup_id}.dump", f"{backup_id}.dump.enc"):
            raise ManifestError(f"file path {path!r} is not this backup's own archive")
    elif len(parts) != 2 or parts[0] != f"{backup_id}.dir" or not _FILE_NAME.match(parts[1]):
        raise ManifestError(f"file path {path!r} is not inside this backup's own folder "
                            f"{backup_id}.dir/")
    return path


def _need(data: dict[str, Any], name: str, kinds: type | tuple[type, ...],
          optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ManifestError(f"field {name!r} has the wrong type")
    if not isinstance(value, kinds):
        raise ManifestError(f"field {name!r} is missing or has the wrong type")
    return value


def _file(data: Any, backup_id: str, fmt: str, globals_file: bool = False) -> BackupFile:
    if not isinstance(data, dict):
        raise ManifestError("a file entry is not an object")
    path = check_file_path(backup_id, _need(data, "path", str), fmt, globals_file=globals_file)
    size = _need(data, "size", int)
    sha = _need(data, "sha256", str)
    if size < 0 or not _SHA256.match(sha):
        raise ManifestError(f"file {path!r} has a bad size or sha256")
    return BackupFile(path, size, sha)


def load_manifest(raw: bytes | str, *, expected_id: str | None = None) -> BackupManifest:
    """Parse and validate a manifest; ManifestError (one line) when it cannot be trusted."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ManifestError("not a JSON object")
    version = data.get("manifest_version", MANIFEST_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > MANIFEST_VERSION \
            or version < 1:
        raise ManifestError(f"manifest_version {version!r} is not one this aegisctl reads "
                            f"(<= {MANIFEST_VERSION})")
    backup_id = _need(data, "id", str)
    if not BACKUP_ID.match(backup_id):
        raise ManifestError(f"id {backup_id!r} is not a backup id")
    if expected_id is not None and backup_id != expected_id:
        raise ManifestError(f"its id {backup_id} does not match where it was found "
                            f"({expected_id})")
    fmt = _need(data, "format", str)
    if fmt not in ("custom", "directory"):
        raise ManifestError(f"format {fmt!r} is not custom or directory")
    files_raw = _need(data, "files", list)
    if not files_raw:
        raise ManifestError("it lists no files")
    if fmt == "custom" and len(files_raw) != 1:
        raise ManifestError("a custom-format backup has exactly one file")
    files = [_file(f, backup_id, fmt) for f in files_raw]
    if len({f.path for f in files}) != len(files):
        raise ManifestError("a file is listed twice")
    globals_file = _file(data["globals_file"], backup_id, fmt, globals_file=True) \
        if data.get("globals_file") is not None else None
    for name in ("target", "database", "started_at", "finished_at", "server_version",
                 "pg_dump_version", "pg_dump_path", "pg_dump_source", "compress", "sha256"):
        _need(data, name, str)
    for name in ("started_at", "finished_at"):
        try:
            moment = parse_time(data[name])
        except ValueError:
            raise ManifestError(f"{name} {data[name]!r} is not a time") from None
        if moment.tzinfo is None:
            raise ManifestError(f"{name} {data[name]!r} has no time zone")
    if not re.match(r"^\d+(\.\d+)?", data["pg_dump_version"]):
        raise ManifestError("pg_dump_version is not a version")
    _need(data, "duration_seconds", (int, float))
    _need(data, "server_version_num", int)
    _need(data, "jobs", int)
    _need(data, "size", int)
    _need(data, "label", str, optional=True)
    _need(data, "pinned", bool, optional=True)
    system_id = _need(data, "system_id", str, optional=True)
    if system_id is not None and not re.match(r"^[1-9][0-9]{0,19}$", system_id):
        raise ManifestError("system_id is not a database system identifier")
    try:
        manifest = BackupManifest.from_dict(
            {**data, "files": [asdict(f) for f in files],
             "globals_file": asdict(globals_file) if globals_file else None})
        manifest.tables = [TableCount(str(t["schema"]), str(t["name"]), int(t["rows"]),
                                      bool(t["exact"])) for t in data.get("tables") or []]
    except (TypeError, KeyError, ValueError) as exc:
        raise ManifestError(f"malformed ({type(exc).__name__}: {exc})") from None
    for name, record in (("verification", manifest.verification),
                         ("restore_test", manifest.restore_test),
                         ("interrupted_check", manifest.interrupted_check)):
        if record is None:
            continue
        statuses = ("interrupted",) if name == "interrupted_check" else ("ok", "failed")
        if record.status not in statuses or record.level not in (
                "checksum", "list", "restore-test"):
            raise ManifestError(f"{name} has an unknown status or level")
        try:
            if not isinstance(record.at, str) or parse_time(record.at).tzinfo is None:
                raise ValueError
        except ValueError:
            raise ManifestError(f"{name}.at is not a time with a time zone") from None
        if not isinstance(record.problems, list) or not isinstance(record.checks, list):
            raise ManifestError(f"{name} problems/checks are not lists")
    if manifest.remote.status not in ("none", "pending", "uploaded"):
        raise ManifestError(f"remote.status {manifest.remote.status!r} is unknown")
    if not isinstance(manifest.remote_checksums, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in manifest.remote_checksums.items()):
        raise ManifestError("remote_checksums is not an object of strings")
    check = manifest.remote_check
    if check is not None:
        if check.status not in ("ok", "missing", "damaged") or check.level not in ("head", "deep") \
                or not isinstance(check.problems, list):
            raise ManifestError("remote_check has an unknown status or level")
        try:
            if not isinstance(check.at, str) or parse_time(check.at).tzinfo is None:
                raise ValueError
        except ValueError:
            raise ManifestError("remote_check.at is not a time with a time zone") from None
    if not isinstance(manifest.vector_columns, dict):
        raise ManifestError("vector_columns is not an object")
    return manifest


def directory_digest(files: list[BackupFile]) -> str:
    """The digest of a directory-format backup's file list (path and sha256 of each file)."""
    import hashlib

    lines = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(lines.encode()).hexdigest()
