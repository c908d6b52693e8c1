"""Is the remote copy still there, and still the same? (`backup verify --remote`, `backup list`,
`backup upload --pending`, `check`.)

An upload is checked once, right after it is sent; the copy can vanish (a lifecycle rule, a
bucket emptied or recreated) or rot (an object overwritten) later, and a manifest saying
"uploaded" would then be untrue. So:

- `verify_remote` asks the store about every object of a backup (HEAD with checksums: size,
  our sha256 metadata, and the store's checksum recorded at upload; `deep`: download and hash
  the bytes). The result is recorded in the manifest (`remote_check`); a copy found missing or
  damaged becomes pending again, so the next `upload --pending` (or `backup create`) sends it
  again. A store that cannot be reached records nothing: that check did not happen.
- `missing_copies` is the cheap check `list` and `upload --pending` make: one listing of the
  target's prefix against what the manifests say was uploaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.backup.manifest import BackupManifest, RemoteCheck, format_time, utcnow
from aegisctl.errors import OperationFailed

if TYPE_CHECKING:
    from aegisctl.backup.remote import Remote
    from aegisctl.output import Block

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


@dataclass
class RemoteVerifyReport:
    id: str
    bucket: str
    prefix: str
    level: str  # head | deep
    status: str  # ok | missing | damaged
    objects: int
    problems: list[str] = field(default_factory=list)
    requeued: bool = False  # marked pending for the next upload

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "remote": True, "ok": self.ok, "status": self.status,
                "level": self.level, "bucket": self.bucket, "prefix": self.prefix,
                "objects": self.objects, "problems": self.problems,
                "requeued": self.requeued}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        blocks: list[Block] = [Note(f"PROBLEM {p}") for p in self.problems]
        where = f"s3://{self.bucket}/{self.prefix}"
        blocks.append(Note(f"backup {self.id}: remote copy {self.status} ({self.level}, "
                           f"{self.objects} object(s) at {where})"))
        if self.requeued:
            blocks.append(Note("marked pending: the next `aegisctl backup upload --pending` "
                               "sends it again"))
        return blocks


def _client_code(exc: BaseException) -> str:
    from aegisctl.backup.remote import _client_code as code

    return code(exc)


def _head(remote: Remote, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        head: dict[str, Any] = remote.client.head_object(
            Bucket=remote.settings.bucket, Key=key, ChecksumMode="ENABLED")
        return head
    except ClientError as exc:
        if _client_code(exc) in _NOT_FOUND:
            return None
        raise


def _hash_object(remote: Remote, key: str) -> str:
    body = remote.client.get_object(Bucket=remote.settings.bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for block in iter(lambda: body.read(1024 * 1024), b""):
        digest.update(block)
    return digest.hexdigest()


def check_objects(remote: Remote, manifest: BackupManifest, *, deep: bool
                  ) -> tuple[str, int, list[str]]:
    """(status, objects checked, problems) of the backup's remote copy."""
    from aegisctl.backup.remote import recorded_checksum, remote_errors

    prefix = remote.prefix(manifest.id)
    missing: list[str] = []
    damaged: list[str] = []
    with remote_errors(f"checking the remote copy of {manifest.id}", remote.settings.bucket):
        for item in manifest.all_files:
            head = _head(remote, prefix + item.path)
            if head is None:
                missing.append(f"{item.path}: missing")
                continue
            if head.get("ContentLength") != item.size:
                damaged.append(f"{item.path}: size {head.get('ContentLength')}, manifest says "
                               f"{item.size}")
                continue
            if head.get("Metadata", {}).get("sha256") != item.sha256:
                damaged.append(f"{item.path}: its sha256 metadata is not the manifest's "
                               "(the object was replaced)")
                continue
            recorded = manifest.remote_checksums.get(item.path)
            if recorded and recorded_checksum(head) != recorded:
                damaged.append(f"{item.path}: the store's checksum is not the one recorded at "
                               "upload (the object was replaced)")
                continue
            if deep and _hash_object(remote, prefix + item.path) != item.sha256:
                damaged.append(f"{item.path}: downloaded bytes do not match its sha256")
        if _head(remote, prefix + "manifest.json") is None:
            missing.append("manifest.json: missing")
    status = "missing" if missing else "damaged" if damaged else "ok"
    return status, len(manifest.all_files) + 1, missing + damaged


def verify_remote(store: Any, remote: Remote, manifest: BackupManifest, *,
                  deep: bool = False) -> RemoteVerifyReport:
    """Check the remote copy of a local backup and record the result in its manifest (the
    caller holds the target's lock). Unreachable store: RemoteUnavailable, nothing recorded."""
    if manifest.remote.status == "none" and not manifest.remote.key_prefix:
        raise OperationFailed(f"backup {manifest.id} was never uploaded",
                              hint=f"aegisctl backup upload {manifest.id}")
    level = "deep" if deep else "head"
    status, objects, problems = check_objects(remote, manifest, deep=deep)
    report = RemoteVerifyReport(manifest.id, remote.settings.bucket,
                                remote.prefix(manifest.id), level, status, objects, problems)
    manifest.remote_check = RemoteCheck(status, level, format_time(utcnow()), problems)
    if status != "ok" and manifest.remote.status == "uploaded":
        manifest.remote.status = "pending"
        manifest.remote.error = f"remote copy {status}: " + "; ".join(problems[:3])
        report.requeued = True
    store.save(manifest)
    return report


def listed_objects(remote: Remote) -> dict[str, int]:
    """key -> size of every object under the target's prefix (one paginated listing)."""
    from aegisctl.backup.remote import remote_errors

    found: dict[str, int] = {}
    with remote_errors("listing remote backups", remote.settings.bucket):
        paginator = remote.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=remote.settings.bucket, Prefix=remote.prefix()):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = int(obj.get("Size", 0))
    return found


def copy_problems(remote: Remote, manifest: BackupManifest, objects: dict[str, int]
                  ) -> list[str]:
    """What the listing says is wrong with an uploaded backup's remote copy."""
    prefix = remote.prefix(manifest.id)
    problems = []
    for item in manifest.all_files:
        size = objects.get(prefix + item.path)
        if size is None:
            problems.append(f"{item.path}: missing")
        elif size != item.size:
            problems.append(f"{item.path}: size {size}, manifest says {item.size}")
    if prefix + "manifest.json" not in objects:
        problems.append("manifest.json: missing")
    return problems


def missing_copies(remote: Remote, manifests: list[BackupManifest]) -> dict[str, list[str]]:
    """id -> problems, for every backup the manifests call uploaded whose copy is not whole."""
    uploaded = [m for m in manifests if m.remote.status == "uploaded"]
    if not uploaded:
        return {}
    objects = listed_objects(remote)
    out = {}
    for manifest in uploaded:
        problems = copy_problems(remote, manifest, objects)
        if problems:
            out[manifest.id] = problems
    return out


@dataclass
class RemoteVerifyResult:
    reports: list[RemoteVerifyReport]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)

    def to_json(self) -> Any:
        if len(self.reports) == 1:
            return self.reports[0].to_json()
        return {"ok": self.ok, "backups": [r.to_json() for r in self.reports]}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        blocks: list[Block] = []
        for report in self.reports:
            blocks += report.to_view()
        return blocks or [Note("no uploaded backup to check")]


def verify_remote_locked(loaded: Any, target: Any, backup_id: str | None, *,
                         every: bool = False, deep: bool = False,
                         wait_lock: float = 0.0) -> RemoteVerifyResult:
    """`backup verify --remote`: one backup (None: the newest one ever uploaded), or `every`
    one ever uploaded, under the target's lock (the manifests record the result)."""
    from aegisctl.backup.remote import open_remote
    from aegisctl.backup.store import BackupStore
    from aegisctl.errors import UsageError
    from aegisctl.locks import target_lock

    store = BackupStore(loaded.settings.backup, target.name)
    remote = open_remote(loaded.settings.backup.remote, target.name)
    if backup_id is not None:
        ids = [store.load(backup_id).id]
    else:
        sent = [m.id for m in store.manifests() if m.remote.key_prefix]
        if not sent:
            raise UsageError(f"target '{target.name}' has no local backup that was ever "
                             "uploaded", hint="aegisctl backup upload --pending")
        ids = sent if every else sent[-1:]
    with target_lock(loaded.settings, target.name, "backup verify", wait_lock):
        return RemoteVerifyResult([verify_remote(store, remote, store.load(i), deep=deep)
                                   for i in ids])
