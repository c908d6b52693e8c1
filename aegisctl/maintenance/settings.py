"""The `maintenance:` section of the configuration (see config.example.yaml for every key).

Imports nothing but the standard library, so loading the config stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

# The same markers aegisctl.config uses for values written with a unit ("2s", "1GB").
Duration = Annotated[float, "duration"]
Size = Annotated[int, "size"]


@dataclass
class PrewarmSettings:
    # When aegisctl loads the vector indexes into memory by itself (`maint prewarm` runs
    # whenever asked): server_start (`aegisctl local start` started the server), restore_test
    # (after `backup verify --restore-test`) and drill (after `backup physical drill`): those
    # read a whole backup through the caches the live database uses.
    after: list[Literal["server_start", "restore_test", "drill"]] = field(default_factory=list)
    # Load the indexes' tables (and their TOAST tables) too, not only the indexes.
    tables: bool = True


@dataclass
class MaintenanceSettings:
    # Every step that needs a strong table lock (VACUUM FULL, REINDEX without CONCURRENTLY,
    # DETACH PARTITION, the swap after a vector index build) waits at most this long for it, so
    # it never queues behind a pg_dump or a long transaction with the application queued
    # behind it; then it retries with backoff, lock_attempts times in all, and gives up.
    lock_timeout: Duration = 2.0
    lock_attempts: int = 5
    lock_max_delay: Duration = 30.0
    # For index builds (REINDEX, vector-index): pgvector builds HNSW much faster when the
    # graph fits in maintenance_work_mem.
    maintenance_work_mem: Size = 1024**3
    parallel_workers: int = 1
    # How often progress (pg_stat_progress_vacuum / create_index) is reported on a terminal.
    progress_interval: Duration = 2.0
    prewarm: PrewarmSettings = field(default_factory=PrewarmSettings)
