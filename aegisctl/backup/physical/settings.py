"""The `backup.physical:` section of the configuration (see config.example.yaml).

Physical backups, WAL streaming and point-in-time recovery are done by Barman, run as a separate
program (it is GPL-3.0: aegisctl never imports it). This module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

Duration = Annotated[float, "duration"]
Size = Annotated[int, "size"]


@dataclass
class PhysicalRemoteSettings:
    """`backup.physical.remote`: base backups and WAL in the `backup.remote` store, encrypted
    with `backup.encryption`'s key (see physical/offsite.py)."""

    # Send physical backups and WAL to backup.remote when it is configured.
    upload: bool = True
    # A base backup goes up as a tar stream cut into encrypted volumes of this much data
    # (one volume at a time is staged on disk; a killed upload resumes at its volume).
    volume_size: Size = 256 * 1000**2
    # check: the remote WAL archive behind the local one by more than this (the RPO if the
    # host dies now) warns; twice as much is critical.
    max_wal_lag: Duration = 600.0
    max_wal_lag_bytes: Size = 256 * 1000**2


@dataclass
class PhysicalSettings:
    # Barman's home, configuration, logs and the private environment aegisctl installs it in.
    # None -> <backup.directory>/<target>/barman (see physical/identity.py).
    directory: str | None = None
    # An existing `barman` executable to use instead of the private one aegisctl installs.
    barman_path: str | None = None
    # The Barman release aegisctl installs into its private environment.
    barman_version: str = "3.19.1"
    # As root, Barman (and every restored server) runs as this user; None -> embedded.run_as.
    run_as: str | None = None
    # The physical replication slot the WAL streamer uses (created with WAL reserved at once).
    slot_name: str = "aegisctl_barman"
    # Set on the server by `enable`: a slot never holds back more WAL than this (-1 would let
    # a dead streamer fill the disk). Past it the slot is invalidated and PITR has a gap.
    max_slot_wal_keep_size: Size = 10 * 1000**3
    # How often `backup wal stream` moves completed WAL segments into the archive.
    archive_interval: Duration = 10.0
    # Start each backup with a fast checkpoint (an I/O burst) instead of waiting for a spread
    # one (up to checkpoint_timeout x checkpoint_completion_target).
    immediate_checkpoint: bool = True
    # gzip the archived WAL segments (Barman's `compression`); embeddings barely compress.
    compress_wal: bool = False
    # Checks: warn when streaming lags more than this, or the slot holds back more than this.
    max_lag: Size = 256 * 1000**2
    max_slot_retained: Size = 5 * 1000**3
    # Checks: warn when the newest physical backup / successful drill is older than this.
    max_backup_age: Duration = 8 * 86400.0
    max_drill_age: Duration = 35 * 86400.0
    # A drill's restored server must be promoted within this long.
    drill_timeout: Duration = 900.0
    remote: PhysicalRemoteSettings = field(default_factory=PhysicalRemoteSettings)


def check_physical_settings(physical: PhysicalSettings, origin: str) -> None:
    """Ranges the generic validator cannot know (called from config._check_consistency)."""
    import re

    from aegisctl.errors import ConfigError

    key = "backup.physical"
    if not re.fullmatch(r"[a-z0-9_]{1,63}", physical.slot_name):
        raise ConfigError(f"{origin}: {key}.slot_name: {physical.slot_name!r} is not a valid "
                          "slot name (lower-case letters, digits and _, at most 63)")
    if not re.fullmatch(r"\d+(\.\d+)*", physical.barman_version):
        raise ConfigError(f"{origin}: {key}.barman_version: expected a version like 3.19.1")
    for name, value, low in (("archive_interval", physical.archive_interval, 1.0),
                             ("drill_timeout", physical.drill_timeout, 10.0),
                             ("max_slot_wal_keep_size", physical.max_slot_wal_keep_size,
                              64 * 1024**2),
                             ("remote.volume_size", physical.remote.volume_size, 1024**2)):
        if value < low:
            raise ConfigError(f"{origin}: {key}.{name}: must be at least {low:g}")
