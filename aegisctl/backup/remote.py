"""Remote copies on any S3-compatible store (boto3).

Objects: <prefix><target>/<id>/<file> for every file of a backup, then
<prefix><target>/<id>/manifest.json, written last: a remote backup without its manifest is
incomplete and never listed. Credentials come from boto3's standard chain (environment,
shared config/credentials files and `profile`, instance roles); none is ever stored by aegisctl.

Integrity: each object is sent with a SHA-256 checksum (ChecksumAlgorithm; S3 rejects a body
that does not match, per part for multipart uploads) and our own sha256 in its metadata; after
upload, HEAD must report the same size and sha256 before the backup counts as uploaded.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegisctl.backup.manifest import BackupFile, BackupManifest, format_time, utcnow
from aegisctl.backup.settings import RemoteSettings
from aegisctl.backup.store import TMP_PREFIX, BackupStore, fsync_dir, sha256_file
from aegisctl.errors import ConfigError, OperationFailed, RemoteUnavailable

Progress = Callable[[str, int], None]


def _boto_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def describe(exc: BaseException) -> str:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (environment, ~/.aws/credentials, profile or role)"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip(": ")
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextlib.contextmanager
def remote_errors(what: str) -> Iterator[None]:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )
    from botocore.exceptions import ConnectTimeoutError as BotoConnectTimeout

    try:
        yield
    except (EndpointConnectionError, BotoConnectTimeout, ReadTimeoutError,
            ConnectionClosedError, NoCredentialsError) as exc:
        raise RemoteUnavailable(f"{what}: remote store unreachable: {describe(exc)}") from None
    except ClientError as exc:
        raise OperationFailed(f"{what}: {describe(exc)}") from None
    except _boto_errors() as exc:
        raise RemoteUnavailable(f"{what}: {describe(exc)}") from None


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

    session = boto3.session.Session(profile_name=settings.profile) if settings.profile \
        else boto3.session.Session()
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


def _upload_file(remote: Remote, path: Path, key: str, item: BackupFile,
                 progress: Progress | None) -> None:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=remote.settings.multipart_threshold,
                            multipart_chunksize=remote.settings.multipart_chunksize)
    done = [0]

    def callback(count: int) -> None:
        done[0] += count
        if progress:
            progress(f"uploading {path.name}", done[0])

    remote.client.upload_file(str(path), remote.settings.bucket, key,
                              ExtraArgs=_extra_args(remote.settings, item.sha256),
                              Config=config, Callback=callback)
    head = remote.client.head_object(Bucket=remote.settings.bucket, Key=key,
                                     ChecksumMode="ENABLED")
    problems = []
    if head.get("ContentLength") != item.size:
        problems.append(f"size {head.get('ContentLength')} != {item.size}")
    if head.get("Metadata", {}).get("sha256") != item.sha256:
        problems.append("sha256 metadata differs")
    stored = head.get("ChecksumSHA256")
    expected = base64.b64encode(bytes.fromhex(item.sha256)).decode()
    if stored and "-" not in stored and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT" \
            and stored != expected:
        problems.append("S3's SHA-256 checksum differs from the local file's")
    if problems:
        raise OperationFailed(f"upload of {key} did not verify: {'; '.join(problems)}")


def upload_backup(store: BackupStore, manifest: BackupManifest, remote: Remote,
                  progress: Progress | None = None) -> BackupManifest:
    """Upload a backup's files, check them, then its manifest; mark it uploaded locally."""
    prefix = remote.prefix(manifest.id)
    items = list(manifest.files) + ([manifest.globals_file] if manifest.globals_file else [])
    with remote_errors(f"uploading backup {manifest.id}"):
        for item in items:
            path = store.folder / item.path
            if sha256_file(path) != item.sha256:
                raise OperationFailed(f"{item.path} no longer matches its manifest; "
                                      "not uploading a damaged backup")
            _upload_file(remote, path, prefix + item.path, item, progress)
        manifest.remote.status = "uploaded"
        manifest.remote.bucket = remote.settings.bucket
        manifest.remote.key_prefix = prefix
        manifest.remote.uploaded_at = format_time(utcnow())
        manifest.remote.error = None
        if remote.settings.object_lock_days > 0:
            manifest.remote.object_lock_until = format_time(
                utcnow() + dt.timedelta(days=remote.settings.object_lock_days))
        body = json.dumps(manifest.to_dict(), indent=2).encode()
        extra = _extra_args(remote.settings, "")
        extra.pop("Metadata")
        remote.client.put_object(Bucket=remote.settings.bucket, Key=prefix + "manifest.json",
                                 Body=body, ContentType="application/json", **extra)
    store.save(manifest)
    return manifest


def remote_manifests(remote: Remote) -> list[BackupManifest]:
    """Every complete remote backup of the target (those with a manifest), oldest first."""
    found = []
    with remote_errors("listing remote backups"):
        paginator = remote.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=remote.settings.bucket, Prefix=remote.prefix()):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/manifest.json"):
                    continue
                body = remote.client.get_object(Bucket=remote.settings.bucket,
                                                Key=obj["Key"])["Body"].read()
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    found.append(BackupManifest.from_dict(json.loads(body)))
    return sorted(found, key=lambda m: (m.finished_at, m.id))


def download_backup(store: BackupStore, remote: Remote, backup_id: str,
                    progress: Progress | None = None) -> BackupManifest:
    prefix = remote.prefix(backup_id)
    store.ensure()
    if store.manifest_path(backup_id).exists():
        from aegisctl.backup.verify import check_files

        # A local copy whose files are all there is never overwritten; one with missing or
        # truncated files is repaired from the remote copy.
        if not check_files(store, store.load(backup_id), checksum=False):
            raise OperationFailed(f"backup {backup_id} is already here, complete "
                                  f"({store.folder})", hint="aegisctl backup verify to check it")
    with remote_errors(f"downloading backup {backup_id}"):
        try:
            body = remote.client.get_object(Bucket=remote.settings.bucket,
                                            Key=prefix + "manifest.json")["Body"].read()
        except remote.client.exceptions.NoSuchKey:
            raise OperationFailed(f"no remote backup {backup_id} under "
                                  f"s3://{remote.settings.bucket}/{prefix}") from None
        manifest = BackupManifest.from_dict(json.loads(body))
        items = list(manifest.files) + ([manifest.globals_file] if manifest.globals_file else [])
        placed: list[Path] = []
        try:
            for item in items:
                final = store.folder / item.path
                top = store.folder / Path(item.path).parts[0]
                tmp = store.folder / f"{TMP_PREFIX}{Path(item.path).name}.{os.getpid()}"
                final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                if top.is_dir() and top not in placed:
                    placed.append(top)
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
            for path in placed:
                with contextlib.suppress(OSError):
                    path.unlink() if path.is_file() else None
            raise
    store.save(manifest)
    return manifest


def delete_remote(store: BackupStore, remote: Remote, backup_id: str, reason: str,
                  command: str) -> int:
    """Delete a remote backup, manifest first; the deletion goes to the audit log."""
    prefix = remote.prefix(backup_id)
    bucket = remote.settings.bucket
    with remote_errors(f"deleting remote backup {backup_id}"):
        keys = [obj["Key"] for page in remote.client.get_paginator("list_objects_v2")
                .paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])]
        keys.sort(key=lambda k: not k.endswith("manifest.json"))
        for key in keys:
            remote.client.delete_object(Bucket=bucket, Key=key)
    store.audit({"action": "delete", "where": "remote", "target": store.target,
                 "id": backup_id, "bucket": bucket, "keys": keys, "reason": reason,
                 "command": command})
    return len(keys)
