"""Remote copies on any S3-compatible store (boto3).

Objects: <prefix><target>/<id>/<file> for every file of a backup, then
<prefix><target>/<id>/manifest.json, written last: a remote backup without its manifest is
incomplete and never listed. Credentials come from boto3's standard chain (environment,
shared config/credentials files and `profile`, instance roles); none is ever stored by aegisctl.

Integrity: each object is sent with a SHA-256 checksum (ChecksumAlgorithm; S3 rejects a body
that does not match, per part for multipart uploads) and our own sha256 in its metadata; after
upload, HEAD must report the same size and sha256 metadata, and the store's checksum must be
one we computed ourselves: the whole file's, or the composite of the parts' SHA-256s (with or
without the "-N" suffix: stores differ), before the backup counts as uploaded.

Remote manifests are input: they go through manifest.load_manifest (paths proven to name the
backup's own files) before a download writes anything.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegisctl.backup.manifest import (
    BACKUP_ID,
    BackupFile,
    BackupManifest,
    ManifestError,
    format_time,
    load_manifest,
    utcnow,
)
from aegisctl.backup.settings import RemoteSettings
from aegisctl.backup.store import CHUNK, TMP_PREFIX, BackupStore, fsync_dir, sha256_file
from aegisctl.errors import ConfigError, OperationFailed, RemoteUnavailable, UsageError
from aegisctl.testhooks import pause_at

MAX_MANIFEST_BYTES = 16 * 1024 * 1024

Progress = Callable[[str, int], None]


def describe(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip(": ")
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ClientError):
        return describe(cause)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _client_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, ClientError):
            return str(candidate.response.get("Error", {}).get("Code", ""))
    return ""


_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "AllAccessDisabled", "403"}


@contextlib.contextmanager
def remote_errors(what: str, bucket: str | None = None) -> Iterator[None]:
    """Every boto3/botocore failure as one documented line: missing credentials or bucket ->
    ConfigError (2); unreachable store or refused credentials -> RemoteUnavailable (3);
    anything else the store answered -> OperationFailed (1)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )
    from botocore.exceptions import ConnectTimeoutError as BotoConnectTimeout

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError, ProfileNotFound) as exc:
        raise ConfigError(f"{what}: no usable AWS credentials ({describe(exc)})",
                          hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, "
                               "backup.remote.profile or an instance role") from None
    except (EndpointConnectionError, BotoConnectTimeout, ReadTimeoutError,
            ConnectionClosedError) as exc:
        raise RemoteUnavailable(f"{what}: remote store unreachable: {describe(exc)}") from None
    except (ClientError, Boto3Error, BotoCoreError) as exc:
        code = _client_code(exc)
        if code == "NoSuchBucket" and bucket:
            raise ConfigError(f"{what}: bucket {bucket} does not exist ({describe(exc)})",
                              hint="create it or fix backup.remote.bucket") from None
        if code in _AUTH_CODES:
            raise RemoteUnavailable(f"{what}: the remote store refused us: {describe(exc)}",
                                    hint="check the credentials and the bucket policy") from None
        if isinstance(exc, ClientError) or code:
            raise OperationFailed(f"{what}: {describe(exc)}") from None
        if isinstance(exc, BotoCoreError):
            raise RemoteUnavailable(f"{what}: {describe(exc)}") from None
        raise OperationFailed(f"{what}: {describe(exc)}") from None
    except OSError as exc:
        # s3transfer reads and writes local files: a full disk, a permission problem.
        raise OperationFailed(f"{what}: {exc.strerror or exc}") from None


@dataclass
class Remote:
    settings: RemoteSettings
    target: str
    client: Any

    def prefix(self, backup_id: str | None = None) -> str:
        base = f"{self.settings.prefix}{self.target}/"
        return f"{base}{backup_id}/" if backup_id else base


def open_remote(settings: RemoteSettings | None, target: str) -> Remote:
    if settings is None:
        raise ConfigError("no remote store configured", hint="set backup.remote.bucket")
    import boto3
    from botocore.config import Config

    with remote_errors("opening the remote store", settings.bucket):
        session = boto3.session.Session(profile_name=settings.profile) if settings.profile \
            else boto3.session.Session()
        if session.get_credentials() is None:
            from botocore.exceptions import NoCredentialsError

            raise NoCredentialsError()
        client = session.client(
            "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
            config=Config(connect_timeout=settings.connect_timeout, read_timeout=60,
                          retries={"max_attempts": settings.max_attempts, "mode": "standard"}),
        )
    return Remote(settings, target, client)


def _extra_args(settings: RemoteSettings, sha256: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"}
    if settings.storage_class:
        extra["StorageClass"] = settings.storage_class
    if settings.server_side_encryption:
        extra["ServerSideEncryption"] = settings.server_side_encryption
    if settings.sse_kms_key_id:
        extra["SSEKMSKeyId"] = settings.sse_kms_key_id
    if settings.object_lock_days > 0:
        extra["ObjectLockMode"] = settings.object_lock_mode
        extra["ObjectLockRetainUntilDate"] = utcnow() + dt.timedelta(
            days=settings.object_lock_days)
    return extra


@dataclass
class FileDigests:
    sha256: str  # hex, of the whole file
    size: int
    part_size: int
    parts: list[bytes]  # SHA-256 of each multipart part, when the file goes up in parts

    def accepted(self) -> set[str]:
        """The checksums S3 may report: whole-object, or composite (SHA-256 of the parts'
        SHA-256s) with or without the "-N" suffix (moto leaves it off)."""
        values = {base64.b64encode(bytes.fromhex(self.sha256)).decode()}
        if self.parts:
            composite = base64.b64encode(hashlib.sha256(b"".join(self.parts)).digest()).decode()
            values |= {composite, f"{composite}-{len(self.parts)}"}
        return values


def file_digests(path: Path, settings: RemoteSettings) -> FileDigests:
    """One read of the file: its SHA-256 and, when it will be sent as a multipart upload,
    the SHA-256 of each part as boto3 will cut them."""
    from s3transfer.utils import ChunksizeAdjuster  # type: ignore[import-untyped]

    size = path.stat().st_size
    multipart = size >= settings.multipart_threshold
    part_size = ChunksizeAdjuster().adjust_chunksize(settings.multipart_chunksize, size) \
        if multipart else size or 1
    whole = hashlib.sha256()
    parts: list[bytes] = []
    with open(path, "rb") as handle:
        while True:
            part = hashlib.sha256()
            left = part_size
            got = 0
            while left > 0 and (block := handle.read(min(CHUNK, left))):
                whole.update(block)
                part.update(block)
                left -= len(block)
                got += len(block)
            if not got:
                break
            if multipart:
                parts.append(part.digest())
    return FileDigests(whole.hexdigest(), size, part_size, parts)


def recorded_checksum(head: dict[str, Any]) -> str:
    """What verify --remote compares later: the store's SHA-256 checksum, else its ETag."""
    if head.get("ChecksumSHA256"):
        return f"sha256:{head['ChecksumSHA256']}"
    return f"etag:{head.get('ETag', '')}"


def _upload_file(remote: Remote, path: Path, key: str, item: BackupFile,
                 digests: FileDigests, progress: Progress | None,
                 metadata: dict[str, str] | None = None) -> str:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=remote.settings.multipart_threshold,
                            multipart_chunksize=remote.settings.multipart_chunksize)
    done = [0]

    def callback(count: int) -> None:
        done[0] += count
        if progress:
            progress(f"uploading {path.name}", done[0])

    extra = _extra_args(remote.settings, item.sha256)
    extra["Metadata"].update(metadata or {})  # physical WAL: when it was archived
    remote.client.upload_file(str(path), remote.settings.bucket, key, ExtraArgs=extra,
                              Config=config, Callback=callback)
    head = remote.client.head_object(Bucket=remote.settings.bucket, Key=key,
                                     ChecksumMode="ENABLED")
    problems = []
    if head.get("ContentLength") != item.size:
        problems.append(f"size {head.get('ContentLength')} != {item.size}")
    if head.get("Metadata", {}).get("sha256") != item.sha256:
        problems.append("sha256 metadata differs")
    stored = head.get("ChecksumSHA256")
    if stored and stored not in digests.accepted():
        problems.append("the store's SHA-256 checksum matches neither the file's nor its "
                        "parts'")
    if problems:
        raise OperationFailed(f"upload of {key} did not verify: {'; '.join(problems)}")
    return recorded_checksum(head)


def upload_backup(store: BackupStore, manifest: BackupManifest, remote: Remote,
                  progress: Progress | None = None) -> BackupManifest:
    """Upload a backup's files, check them, then its manifest; mark it uploaded locally."""
    prefix = remote.prefix(manifest.id)
    checksums: dict[str, str] = {}
    with remote_errors(f"uploading backup {manifest.id}", remote.settings.bucket):
        for item in manifest.all_files:
            path = store.file_path(item.path)
            try:
                digests = file_digests(path, remote.settings)
            except OSError as exc:
                raise OperationFailed(f"backup {manifest.id}: cannot read {item.path}: "
                                      f"{exc.strerror}") from None
            if digests.sha256 != item.sha256:
                raise OperationFailed(f"backup {manifest.id}: {item.path} no longer matches its "
                                      "manifest; not uploading a damaged backup")
            checksums[item.path] = _upload_file(remote, path, prefix + item.path, item,
                                                digests, progress)
        manifest.remote_checksums = checksums
        manifest.remote_check = None  # a new copy: not checked since
        manifest.remote.status = "uploaded"
        manifest.remote.bucket = remote.settings.bucket
        manifest.remote.key_prefix = prefix
        manifest.remote.uploaded_at = format_time(utcnow())
        manifest.remote.error = None
        if remote.settings.object_lock_days > 0:
            manifest.remote.object_lock_until = format_time(
                utcnow() + dt.timedelta(days=remote.settings.object_lock_days))
        pause_at("upload.before-manifest")
        body = json.dumps(manifest.to_dict(), indent=2).encode()
        extra = _extra_args(remote.settings, "")
        extra.pop("Metadata")
        remote.client.put_object(Bucket=remote.settings.bucket, Key=prefix + "manifest.json",
                                 Body=body, ContentType="application/json", **extra)
    store.save(manifest)
    return manifest


def abort_stale_uploads(remote: Remote) -> list[str]:
    """Abort the incomplete multipart uploads under the target's prefix that started more than
    `abort_incomplete_after` ago (a killed upload's parts); returns their keys."""
    bucket = remote.settings.bucket
    cutoff = utcnow() - dt.timedelta(seconds=remote.settings.abort_incomplete_after)
    aborted = []
    with remote_errors("aborting incomplete uploads", bucket):
        paginator = remote.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=bucket, Prefix=remote.prefix()):
            for upload in stale_uploads(page.get("Uploads", []), remote.prefix(), cutoff):
                remote.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                     UploadId=upload["UploadId"])
                aborted.append(str(upload["Key"]))
    return aborted


def stale_uploads(uploads: list[dict[str, Any]], prefix: str,
                  cutoff: dt.datetime) -> list[dict[str, Any]]:
    """The listed multipart uploads under `prefix` started before `cutoff` (input: checked)."""
    return [u for u in uploads
            if isinstance(u.get("Key"), str) and u["Key"].startswith(prefix)
            and isinstance(u.get("UploadId"), str)
            and isinstance(u.get("Initiated"), dt.datetime) and u["Initiated"] <= cutoff]


@dataclass
class RemoteBackup:
    """A backup-like group of objects under <prefix><target>/<id>/."""

    id: str
    keys: dict[str, int]  # key -> size
    last_modified: dt.datetime
    manifest: BackupManifest | None = None
    state: str = "ok"  # ok | missing files | no manifest | manifest unreadable
    problems: list[str] = field(default_factory=list)

    @property
    def created(self) -> dt.datetime:
        return self.manifest.created if self.manifest is not None else self.last_modified


def _read_manifest(remote: Remote, backup_id: str) -> BackupManifest:
    key = remote.prefix(backup_id) + "manifest.json"
    obj = remote.client.get_object(Bucket=remote.settings.bucket, Key=key)
    if int(obj.get("ContentLength") or 0) > MAX_MANIFEST_BYTES:
        raise ManifestError("remote manifest.json is too large to be one of ours")
    body = obj["Body"].read(MAX_MANIFEST_BYTES + 1)
    try:
        return load_manifest(body, expected_id=backup_id)
    except ManifestError as exc:
        raise ManifestError(f"remote manifest of {backup_id} is unusable: {exc.message}") from None


def scan_remote(remote: Remote) -> list[RemoteBackup]:
    """Every backup-like group of objects of the target, oldest first, each with an honest
    state; manifests are validated (load_manifest) and never trusted for anything else."""
    groups: dict[str, RemoteBackup] = {}
    base = remote.prefix()
    with remote_errors("listing remote backups", remote.settings.bucket):
        paginator = remote.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=remote.settings.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(base):]
                backup_id, slash, _ = rest.partition("/")
                if not slash or not BACKUP_ID.match(backup_id):
                    continue
                group = groups.setdefault(backup_id, RemoteBackup(backup_id, {},
                                                                  obj["LastModified"]))
                group.keys[obj["Key"]] = int(obj.get("Size", 0))
                group.last_modified = max(group.last_modified, obj["LastModified"])
        for group in groups.values():
            prefix = remote.prefix(group.id)
            if prefix + "manifest.json" not in group.keys:
                group.state = "no manifest"
                group.problems.append("no manifest.json: an upload that did not finish")
                continue
            try:
                group.manifest = _read_manifest(remote, group.id)
            except ManifestError as exc:
                group.state = "manifest unreadable"
                group.problems.append(exc.message)
                continue
            for item in group.manifest.all_files:
                size = group.keys.get(prefix + item.path)
                if size is None:
                    group.problems.append(f"{item.path}: missing")
                elif size != item.size:
                    group.problems.append(f"{item.path}: size {size}, manifest says {item.size}")
            if group.problems:
                group.state = "missing files"
    return sorted(groups.values(), key=lambda g: (g.created, g.id))


def remote_manifests(remote: Remote) -> list[BackupManifest]:
    """Every remote backup with a valid manifest, oldest first."""
    return [g.manifest for g in scan_remote(remote) if g.manifest is not None]


def object_lock_until(remote: Remote, group: RemoteBackup) -> dt.datetime | None:
    """The latest S3 Object Lock retain-until date among the backup's objects (asked of the
    store, not taken from the manifest)."""
    latest: dt.datetime | None = None
    with remote_errors(f"reading the Object Lock of remote backup {group.id}",
                       remote.settings.bucket):
        for key in group.keys:
            head = remote.client.head_object(Bucket=remote.settings.bucket, Key=key)
            until = head.get("ObjectLockRetainUntilDate")
            if until is not None and (latest is None or until > latest):
                latest = until
    return latest


def download_backup(store: BackupStore, remote: Remote, backup_id: str,
                    progress: Progress | None = None) -> BackupManifest:
    if not BACKUP_ID.match(backup_id):
        raise UsageError(f"'{backup_id}' is not a backup id (like 20260101T020000Z)")
    prefix = remote.prefix(backup_id)
    store.ensure()
    if store.manifest_path(backup_id).exists():
        from aegisctl.backup.store import check_files

        # A local copy whose files are all there is never overwritten; one with missing or
        # truncated files is repaired from the remote copy.
        if not check_files(store, store.load(backup_id), checksum=False):
            raise OperationFailed(f"backup {backup_id} is already here, complete "
                                  f"({store.folder})", hint="aegisctl backup verify to check it")
    with remote_errors(f"downloading backup {backup_id}", remote.settings.bucket):
        try:
            manifest = _read_manifest(remote, backup_id)
        except remote.client.exceptions.NoSuchKey:
            raise OperationFailed(f"no remote backup {backup_id} under "
                                  f"s3://{remote.settings.bucket}/{prefix}") from None
        placed: list[Path] = []
        try:
            for item in manifest.all_files:
                # Validated by load_manifest: the backup's own name, one level at most.
                parts = item.path.split("/")
                if len(parts) == 2:
                    folder = store.folder / parts[0]
                    if folder.is_symlink():
                        raise OperationFailed(f"{parts[0]} is a symlink; refusing to write "
                                              "through it")
                    if not folder.exists():
                        folder.mkdir(mode=0o700)
                        placed.append(folder)
                final = store.file_path(item.path)
                tmp = store.folder / f"{TMP_PREFIX}{backup_id}.{len(placed)}.{os.getpid()}"
                remote.client.download_file(remote.settings.bucket, prefix + item.path,
                                            str(tmp))
                tmp.chmod(0o600)
                if sha256_file(tmp) != item.sha256:
                    tmp.unlink(missing_ok=True)
                    raise OperationFailed(f"downloaded {item.path} does not match its sha256")
                os.replace(tmp, final)
                placed.append(final)
                if progress:
                    progress("downloading", item.size)
            fsync_dir(store.folder)
        except BaseException:
            for path in reversed(placed):
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() else path.unlink()
            raise
    store.save(manifest)
    return manifest


def delete_remote(store: BackupStore, remote: Remote, backup_id: str, reason: str,
                  command: str) -> int:
    """Delete a remote backup, manifest first; the deletion goes to the audit log."""
    if not BACKUP_ID.match(backup_id):
        raise UsageError(f"'{backup_id}' is not a backup id")
    prefix = remote.prefix(backup_id)
    bucket = remote.settings.bucket
    with remote_errors(f"deleting remote backup {backup_id}", bucket):
        keys = [obj["Key"] for page in remote.client.get_paginator("list_objects_v2")
                .paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])]
        keys = [k for k in keys if k.startswith(prefix)]
        keys.sort(key=lambda k: not k.endswith("manifest.json"))
        for key in keys:
            remote.client.delete_object(Bucket=bucket, Key=key)
    store.audit({"action": "delete", "where": "remote", "target": store.target,
                 "id": backup_id, "bucket": bucket, "keys": keys, "reason": reason,
                 "command": command})
    return len(keys)
