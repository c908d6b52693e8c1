"""The erasure ledger: which memories `memory forget` deleted (ids and SHA-256 of their text,
never the text), when, why and by whom.

It lives in the database (aegis_erasures, written in the same transaction as each DELETE) and
is copied beside the backups (`<backup folder>/<target>/erasure-ledger.json`, written to a
temporary name and renamed) and to the remote store (`<prefix><target>/erasure-ledger.json`,
encrypted like the backups when backup.encryption is set), so it outlives the database: a
restore of an older backup reads the newest copy and deletes again what was forgotten since.

The ledger only grows: every copy written is the union of the database's rows and the copy
already there, so restoring an old backup (whose own table is shorter) loses nothing.

A ledger file is input (anyone with access to the folder or the bucket can edit it), and it
steers deletes: `load_ledger` is its one loader and proves every field (the version, uuids,
kinds, ids as positive integers, hashes as 64 hex digits, times) before anything acts on it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.errors import AegisError, OperationFailed
from aegisctl.memory.refs import KINDS, Kind

if TYPE_CHECKING:
    import psycopg

    from aegisctl.backup.settings import BackupSettings
    from aegisctl.config import LoadedConfig
    from aegisctl.targets import Target

LEDGER_VERSION = 1
LEDGER_FILE = "erasure-ledger.json"
ENCRYPTED_SUFFIX = ".enc"
MAX_LEDGER_BYTES = 512 * 1024 * 1024
MAX_MEMORY_ID = 2**31 - 1  # the memory tables' ids are `serial` (integer)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_KEYS = {"erasure_id", "kind", "memory_id", "content_sha256", "erased_at", "reason",
               "os_user", "db_user", "batch"}
_TEXT_LIMITS = {"reason": 2000, "os_user": 256, "db_user": 256}


class LedgerError(OperationFailed):
    """A ledger copy that cannot be trusted: it never steers a delete."""


@dataclass(frozen=True)
class ErasureEntry:
    erasure_id: str  # one forget run (a uuid)
    kind: Kind
    memory_id: int
    content_sha256: str  # of the memory's text (summary / content), hex
    erased_at: dt.datetime
    reason: str
    os_user: str
    db_user: str
    batch: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.erasure_id, self.kind, self.memory_id)

    def to_json(self) -> dict[str, Any]:
        return {"erasure_id": self.erasure_id, "kind": self.kind, "memory_id": self.memory_id,
                "content_sha256": self.content_sha256,
                "erased_at": self.erased_at.astimezone(dt.UTC).isoformat(),
                "reason": self.reason, "os_user": self.os_user, "db_user": self.db_user,
                "batch": self.batch}


@dataclass
class Ledger:
    entries: list[ErasureEntry] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where the entries came from

    def merged(self, other: Ledger | None) -> Ledger:
        """The union (the ledger only grows), in order of erasure."""
        if other is None:
            return self
        by_key = {e.key: e for e in self.entries}
        for entry in other.entries:
            by_key.setdefault(entry.key, entry)
        entries = sorted(by_key.values(), key=lambda e: (e.erased_at, e.key))
        return Ledger(entries, [*self.sources, *other.sources])

    @property
    def newest(self) -> dt.datetime | None:
        return max((e.erased_at for e in self.entries), default=None)

    def to_bytes(self, target: str) -> bytes:
        """One entry per line (readable, diffable). Each entry is encoded on its own: json's
        indented encoder is pure Python and ten times slower on a large ledger."""
        head = {"ledger_version": LEDGER_VERSION, "target": target,
                "written_at": dt.datetime.now(dt.UTC).isoformat(), "count": len(self.entries)}
        entries = ",\n".join(json.dumps(e.to_json()) for e in self.entries)
        return (json.dumps(head)[:-1] + ', "entries": [\n' + entries + "\n]}\n").encode()


# -- the one loader ---------------------------------------------------------------------------


def _text(entry: dict[str, Any], name: str) -> str:
    value = entry[name]
    if not isinstance(value, str) or len(value) > _TEXT_LIMITS[name]:
        raise ValueError(f"{name} is not a string of at most {_TEXT_LIMITS[name]} characters")
    return value


def _entry(raw: Any) -> ErasureEntry:
    if not isinstance(raw, dict):
        raise ValueError("is not an object")
    if set(raw) != _ENTRY_KEYS:
        missing, extra = _ENTRY_KEYS - set(raw), set(raw) - _ENTRY_KEYS
        raise ValueError("has " + (f"no {', '.join(sorted(missing))}" if missing
                                   else f"unknown field(s) {', '.join(sorted(extra))}"))
    try:
        erasure_id = str(uuid.UUID(str(raw["erasure_id"])))
    except ValueError:
        raise ValueError("erasure_id is not a uuid") from None
    if raw["erasure_id"] != erasure_id:
        raise ValueError("erasure_id is not a uuid in its canonical form")
    kind = raw["kind"]
    if kind not in KINDS:
        raise ValueError(f"kind is not one of {', '.join(KINDS)}")
    memory_id = raw["memory_id"]
    if type(memory_id) is not int or not 0 < memory_id <= MAX_MEMORY_ID:
        raise ValueError("memory_id is not a positive integer")
    digest = raw["content_sha256"]
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ValueError("content_sha256 is not 64 lowercase hex digits")
    batch = raw["batch"]
    if type(batch) is not int or not 0 <= batch <= MAX_MEMORY_ID:
        raise ValueError("batch is not a non-negative integer")
    try:
        erased_at = dt.datetime.fromisoformat(str(raw["erased_at"]))
    except ValueError:
        raise ValueError("erased_at is not an ISO timestamp") from None
    if erased_at.tzinfo is None:
        raise ValueError("erased_at has no time zone")
    return ErasureEntry(erasure_id, kind, memory_id, digest, erased_at, _text(raw, "reason"),
                        _text(raw, "os_user"), _text(raw, "db_user"), batch)


def load_ledger(data: bytes, origin: str) -> Ledger:
    """A ledger file's bytes, proven well-formed; LedgerError (one line) otherwise."""
    if len(data) > MAX_LEDGER_BYTES:
        raise LedgerError(f"erasure ledger {origin} is larger than {MAX_LEDGER_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LedgerError(f"erasure ledger {origin} is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("ledger_version") != LEDGER_VERSION:
        raise LedgerError(f"erasure ledger {origin} is not a version {LEDGER_VERSION} ledger "
                          "(no ledger_version field, or another version)")
    raw_entries = document.get("entries")
    if not isinstance(raw_entries, list):
        raise LedgerError(f"erasure ledger {origin}: `entries` is not a list")
    entries = []
    for n, raw in enumerate(raw_entries, 1):
        try:
            entries.append(_entry(raw))
        except ValueError as exc:
            raise LedgerError(f"erasure ledger {origin} is unusable: entry {n} {exc}") from None
    if document.get("count") != len(entries):
        raise LedgerError(f"erasure ledger {origin} is incomplete: it says it holds "
                          f"{document.get('count')} entries and holds {len(entries)}")
    return Ledger(entries, [origin])


# -- the database's copy ----------------------------------------------------------------------

SELECT_ENTRIES = ("SELECT erasure_id::text, kind, memory_id, content_sha256, erased_at, reason, "
                  "os_user, db_user, batch FROM aegis_erasures ORDER BY erased_at, erasure_id, "
                  "kind, memory_id")


def has_ledger_table(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('aegis_erasures') IS NOT NULL").fetchone()
    return bool(row and row[0])


def read_db_ledger(conn: psycopg.Connection[Any], origin: str = "database") -> Ledger | None:
    """The database's own ledger; None when its schema predates the ledger."""
    if not has_ledger_table(conn):
        return None
    rows = conn.execute(SELECT_ENTRIES).fetchall()
    return Ledger([ErasureEntry(str(r[0]), r[1], int(r[2]), str(r[3]), r[4], str(r[5]),
                                str(r[6]), str(r[7]), int(r[8])) for r in rows], [origin])


def insert_entries(conn: psycopg.Connection[Any], entries: Iterable[ErasureEntry]) -> int:
    """Add ledger rows (those already there are left alone): the number added."""
    rows = [(e.erasure_id, e.kind, e.memory_id, e.content_sha256, e.erased_at, e.reason,
             e.os_user, e.db_user, e.batch) for e in entries]
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO aegis_erasures (erasure_id, kind, memory_id, content_sha256, "
            "erased_at, reason, os_user, db_user, batch) VALUES (%s, %s, %s, %s, %s, %s, %s, "
            "%s, %s) ON CONFLICT DO NOTHING", rows)
    return len(rows)


# -- the copies beside the backups and on the remote ------------------------------------------


def local_path(settings: BackupSettings, target: str) -> Path:
    from aegisctl.backup.store import BackupStore

    return BackupStore(settings, target).folder / LEDGER_FILE


def read_local(settings: BackupSettings, target: str) -> Ledger | None:
    path = local_path(settings, target)
    if path.is_symlink():
        raise LedgerError(f"erasure ledger {path} is a symlink; refusing to read it")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerError(f"erasure ledger {path} is unreadable: {exc.strerror}") from None
    return load_ledger(data, str(path))


def write_local(settings: BackupSettings, target: str, ledger: Ledger) -> Path:
    """Written to a temporary name (swept like the backups' own) and renamed into place."""
    from aegisctl.backup.store import BackupStore, os_error, write_atomic

    store = BackupStore(settings, target)
    store.ensure()
    path = store.folder / LEDGER_FILE
    try:
        write_atomic(path, ledger.to_bytes(target))
    except OSError as exc:
        raise os_error("cannot write the erasure ledger", path, exc) from None
    return path


def _remote_key(remote: Any, encrypted: bool) -> str:
    return str(remote.prefix()) + LEDGER_FILE + (ENCRYPTED_SUFFIX if encrypted else "")


def upload_remote(settings: BackupSettings, target: str, ledger: Ledger) -> str:
    """Put the ledger beside the target's remote backups (encrypted with the backup key when
    one is configured, with the store's server-side encryption settings); its key."""
    import hashlib
    import io

    from aegisctl.backup import crypto
    from aegisctl.backup.remote import _extra_args, open_remote, remote_errors

    remote = open_remote(settings.remote, target)
    key = crypto.load_key(settings.encryption)
    body = ledger.to_bytes(target)
    if key is not None:
        sink = io.BytesIO()
        writer = crypto.EncryptingWriter(sink, key)
        writer.write(body)
        writer.close()
        body = sink.getvalue()
    object_key = _remote_key(remote, key is not None)
    digest = hashlib.sha256(body).hexdigest()
    with remote_errors("uploading the erasure ledger", remote.settings.bucket):
        remote.client.put_object(Bucket=remote.settings.bucket, Key=object_key, Body=body,
                                 **_extra_args(remote.settings, digest))
        head = remote.client.head_object(Bucket=remote.settings.bucket, Key=object_key)
    if head.get("ContentLength") != len(body):
        raise OperationFailed(f"upload of {object_key} did not verify: size "
                              f"{head.get('ContentLength')} != {len(body)}")
    return object_key


def read_remote(settings: BackupSettings, target: str) -> Ledger | None:
    """The remote copy (decrypted and validated); None when there is none."""
    import io

    from aegisctl.backup import crypto
    from aegisctl.backup.remote import _client_code, open_remote, remote_errors

    remote = open_remote(settings.remote, target)
    key = crypto.load_key(settings.encryption)
    object_key = _remote_key(remote, key is not None)
    origin = f"s3://{remote.settings.bucket}/{object_key}"
    with remote_errors("reading the erasure ledger", remote.settings.bucket):
        try:
            obj = remote.client.get_object(Bucket=remote.settings.bucket, Key=object_key)
        except Exception as exc:
            if _client_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        if int(obj.get("ContentLength") or 0) > MAX_LEDGER_BYTES:
            raise LedgerError(f"erasure ledger {origin} is too large to be one of ours")
        body = obj["Body"].read(MAX_LEDGER_BYTES + 1)
    if key is not None:
        try:
            body = b"".join(crypto.decrypt_stream(io.BytesIO(body), key, origin))
        except OperationFailed as exc:
            raise LedgerError(f"erasure ledger {exc.message}") from None
    return load_ledger(body, origin)


@dataclass
class PublishResult:
    entries: int
    local: str | None = None
    remote: str | None = None
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "local": self.local, "remote": self.remote,
                "problems": self.problems}


def publish(settings: BackupSettings, target: str, db_ledger: Ledger,
            remote: bool = True) -> PublishResult:
    """Copy the database's ledger beside the backups and to the remote (each copy the union
    with what is there). A failure to write is reported, never raised: the erasure itself is
    done and recorded in the database; the next forget or backup writes the copies again."""
    result = PublishResult(len(db_ledger.entries))
    merged = db_ledger
    local_ok = remote_ok = True
    try:
        merged = merged.merged(read_local(settings, target))
    except AegisError as exc:  # a damaged copy is not overwritten: it may hold more
        result.problems.append(f"local copy not written: {exc.message}")
        local_ok = False
    use_remote = settings.remote is not None and remote
    if use_remote:
        try:
            merged = merged.merged(read_remote(settings, target))
        except AegisError as exc:
            result.problems.append(f"remote copy not written: {exc.message}")
            remote_ok = False
    result.entries = len(merged.entries)
    if local_ok:
        try:
            result.local = str(write_local(settings, target, merged))
        except AegisError as exc:
            result.problems.append(f"local copy not written: {exc.message}")
    if use_remote and remote_ok:
        try:
            result.remote = upload_remote(settings, target, merged)
        except AegisError as exc:
            result.problems.append(f"remote copy not written: {exc.message}")
    return result


def publish_with_backup(loaded: LoadedConfig, target: Target, remote: bool = True
                        ) -> PublishResult | None:
    """`backup create`'s copy of the ledger; None when the database has no ledger (its schema
    predates it) or an empty one and no copy exists yet. Reported, never raised: the backup
    is good."""
    from aegisctl.db import connect

    try:
        with connect(loaded, target, "backup create", "maintenance") as conn:
            ledger = read_db_ledger(conn)
    except AegisError as exc:
        return PublishResult(0, problems=[f"erasure ledger not copied: {exc.message}"])
    if ledger is None:
        return None
    if not ledger.entries and not local_path(loaded.settings.backup, target.name).exists():
        return None  # nothing was ever forgotten here: no file beside the backups
    return publish(loaded.settings.backup, target.name, ledger, remote)


@dataclass
class CurrentLedger:
    ledger: Ledger
    notes: list[str] = field(default_factory=list)


def current_ledger(settings: BackupSettings, target: str,
                   conn: psycopg.Connection[Any] | None = None) -> CurrentLedger:
    """The newest ledger there is: the union of the copy beside the backups, the remote copy
    and (when given) the live database's own. A copy that exists but is damaged raises
    LedgerError; an unreachable remote is a note (the local copy is written at every erasure)."""
    found = Ledger()
    notes: list[str] = []
    found = found.merged(read_local(settings, target))
    if settings.remote is not None:
        try:
            found = found.merged(read_remote(settings, target))
        except LedgerError:
            raise
        except AegisError as exc:
            notes.append(f"remote erasure ledger not read ({exc.message}); the local copy "
                         "was used")
    if conn is not None:
        found = found.merged(read_db_ledger(conn))
    return CurrentLedger(found, notes)
