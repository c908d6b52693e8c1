"""The per-target job lock for maintenance and cleanup: the same lock (aegisctl.locks) as
backup create, prune and restore, so none of them overlap."""

from __future__ import annotations

from contextlib import AbstractContextManager

from aegisctl.config import LoadedConfig
from aegisctl.targets import Target


def job_lock(loaded: LoadedConfig, target: Target, what: str,
             wait_seconds: float = 0.0) -> AbstractContextManager[None]:
    from aegisctl.locks import target_lock

    return target_lock(loaded.settings, target.name, what, wait_seconds)
