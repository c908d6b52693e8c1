"""The `backup:` section of the configuration (see config.example.yaml for every key).

Kept here, beside the code that uses it; aegisctl.config plugs it into `Settings`. This module
imports nothing but the config types, so loading the config stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from aegisctl.backup.physical.settings import PhysicalSettings

# The same markers aegisctl.config uses for values written with a unit ("36h", "64MB").
Duration = Annotated[float, "duration"]
Size = Annotated[int, "size"]


@dataclass
class RetentionSettings:
    keep_days: int = 14
    # Always keep this many newest verified-good backups, whatever their age.
    min_keep: int = 3
    # Optional grandfather-father-son tiers: the newest good backup of each of the last N
    # days / ISO weeks / months is kept as well. 0 disables a tier.
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0


@dataclass
class RemoteSettings:
    bucket: str
    endpoint_url: str | None = None
    prefix: str = ""
    region: str | None = None
    storage_class: str | None = None
    server_side_encryption: str | None = None  # AES256 | aws:kms
    sse_kms_key_id: str | None = None
    profile: str | None = None  # a named profile of the standard AWS config files
    multipart_threshold: Size = 64 * 1024 * 1024
    multipart_chunksize: Size = 16 * 1024 * 1024
    connect_timeout: Duration = 10.0
    max_attempts: int = 3
    # S3 Object Lock: uploaded objects get a retain-until date this many days ahead (the
    # bucket must have Object Lock enabled). 0 disables it.
    object_lock_days: int = 0
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] = "GOVERNANCE"
    # A multipart upload under the target's prefix still incomplete after this long was killed
    # (its parts are stored and billed, and no listing shows them): the next upload or remote
    # prune aborts it. Longer than any upload takes.
    abort_incomplete_after: Duration = 86400.0
    retention: RetentionSettings = field(
        default_factory=lambda: RetentionSettings(keep_days=90, min_keep=3)
    )


@dataclass
class EncryptionSettings:
    # A 32-byte key: a file holding it (raw, hex or base64; chmod 600), or the name of an
    # environment variable holding it as hex or base64. Exactly one of the two.
    key_file: str | None = None
    key_env: str | None = None


@dataclass
class BackupSettings:
    # None -> /var/backups/aegisctl as root, else $XDG_DATA_HOME/aegisctl/backups.
    directory: str | None = None
    format: Literal["custom", "directory"] = "custom"
    jobs: int = 1
    # gzip level 0-9. Default 1: embeddings barely compress, and on 1536-d vectors level 6 took
    # 5x the time of level 1 for 12 % less space (see the README).
    compress: int = 1
    pg_dump_path: str | None = None
    # Tables with more estimated rows than this get an estimate (flagged) in the manifest.
    exact_count_limit: int = 1_000_000
    # After create: checksum + `pg_restore --list` (cheap), or a full restore test.
    verify_after_create: Literal["none", "quick", "restore-test"] = "quick"
    # `backup list` flags the target when its newest good backup is older than this.
    max_age: Duration = 36 * 3600.0
    # JSON lines, one per deleted backup (local or remote). None -> <directory>/audit.log.
    audit_log: str | None = None
    # On a cluster target (Patroni or a multi-host DSN): where logical backups are dumped
    # from. replica: a streaming replica within patroni.max_lag, else the leader.
    source: Literal["leader", "replica"] = "leader"
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    remote: RemoteSettings | None = None
    encryption: EncryptionSettings | None = None
    physical: PhysicalSettings = field(default_factory=PhysicalSettings)
