"""The per-target job lock: maintenance and cleanup take the same flock as backup create,
prune and restore (the backup store's lock file), so none of them overlap."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aegisctl.config import LoadedConfig
from aegisctl.targets import Target


@contextlib.contextmanager
def job_lock(loaded: LoadedConfig, target: Target, what: str,
             wait_seconds: float = 0.0) -> Iterator[None]:
    from aegisctl.backup.lock import target_lock
    from aegisctl.backup.store import BackupStore

    store = BackupStore(loaded.settings.backup, target.name)
    with target_lock(store.lock_path, what, wait_seconds):
        yield
