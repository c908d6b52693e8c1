"""The `checks:` section of the configuration: thresholds of `aegisctl check` (and the figures
`aegisctl diag` highlights). See config.example.yaml for every key.

Imports nothing but the config types, so loading the config stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Annotated, Literal

from aegisctl.errors import ConfigError

Duration = Annotated[float, "duration"]
Size = Annotated[int, "size"]


@dataclass
class Threshold:
    """Higher is worse: WARNING at or above `warning`, CRITICAL at or above `critical`."""

    warning: float
    critical: float


@dataclass
class DurationThreshold:
    warning: Duration
    critical: Duration


@dataclass
class SizeThreshold:
    warning: Size
    critical: Size


@dataclass
class SlowQueryThreshold:
    warning: Duration = 5.0
    critical: Duration = 30.0
    # slow_statements judges each statement's mean time over the calls since the previous
    # check run, and only statements called at least this often in that window.
    min_calls: int = 5


@dataclass
class CacheHitThreshold:
    warning: float = 0.95
    critical: float = 0.90
    # Warm-up: the ratio is judged only once this many blocks were read or hit since the
    # statistics were reset (an idle new database has a meaningless ratio).
    min_blocks: int = 10_000


@dataclass
class DatabaseSizeThreshold:
    warning: float = 80
    critical: float = 90
    # The storage allotted to this database; unset -> the check reports the size only.
    allocated: Size | None = None


@dataclass
class FilterShape:
    """One filter the agent searches its memory with (`checks.vector_recall.filters`): every
    condition given must hold (AND). vector_recall_filtered and `maint vector-index --tune`
    measure HNSW under it."""

    name: str
    # episodic | semantic; unset: every memory table the conditions exist on.
    kind: Literal["episodic", "semantic"] | None = None
    tag: str | None = None  # tags @> ARRAY[tag]
    context: dict[str, str] = field(default_factory=dict)  # episodic context @> {key: value}
    since: Duration | None = None  # the last N: the table's time column >= now() - since
    event_type: str | None = None  # episodic only
    category: str | None = None  # semantic only


@dataclass
class RecallThreshold:
    warning: float = 0.90
    critical: float = 0.80
    # Stored vectors used as queries per ANN index (approximate vs exact top-10); 0 disables.
    sample: int = 10
    # Each sampled query also runs exactly (a full scan): indexes on tables with more rows
    # (estimated) are skipped; run `--only vector_recall` less often and raise this for them.
    max_rows: int = 100_000
    # The filter shapes vector_recall_filtered measures (and --tune tunes for).
    filters: list[FilterShape] = field(default_factory=list)


@dataclass
class BloatThreshold:
    """Wasted bytes of the worst relation; a relation counts only when its wasted share is
    also above `min_ratio` (bytes and ratio both)."""

    warning: Size = 64 * 1024**2
    critical: Size = 1024**3
    min_ratio: float = 0.2


@dataclass
class MinSize:
    # Tables smaller than this are left out.
    min_size: Size = 10 * 1024**2


@dataclass
class ChecksSettings:
    connections_pct: Threshold = field(default_factory=lambda: Threshold(80, 90))
    cache_hit_ratio: CacheHitThreshold = field(default_factory=CacheHitThreshold)
    slow_query_seconds: SlowQueryThreshold = field(default_factory=SlowQueryThreshold)
    database_size_pct: DatabaseSizeThreshold = field(default_factory=DatabaseSizeThreshold)
    replication_lag_seconds: DurationThreshold = field(
        default_factory=lambda: DurationThreshold(60, 300))
    # Open transactions (active or idle in transaction): pghero's long-running default, 60 s.
    long_transaction_seconds: DurationThreshold = field(
        default_factory=lambda: DurationThreshold(60, 300))
    # Sessions waiting on a lock held by another session.
    lock_wait_seconds: DurationThreshold = field(
        default_factory=lambda: DurationThreshold(30, 300))
    # age(datfrozenxid) in transactions; PostgreSQL stops accepting writes near 2^31.
    wraparound_age: Threshold = field(
        default_factory=lambda: Threshold(1_000_000_000, 1_500_000_000))
    # How far a WAL receiver's (pg_receivewal, Barman) flushed position is behind the primary.
    # Without --synchronous a receiver flushes at each 16MB segment: stay above that.
    wal_receiver_lag_bytes: SizeThreshold = field(
        default_factory=lambda: SizeThreshold(64 * 1024**2, 1024**3))
    # A Patroni replica's lag behind its leader (bytes, from the REST API's /cluster).
    cluster_lag_bytes: SizeThreshold = field(
        default_factory=lambda: SizeThreshold(16 * 1024**2, 256 * 1024**2))
    # WAL retained by replication slots nobody is reading.
    slot_retained_wal: SizeThreshold = field(
        default_factory=lambda: SizeThreshold(1024**3, 10 * 1024**3))
    vector_recall: RecallThreshold = field(default_factory=RecallThreshold)
    # Table and (B-tree) index bloat.
    table_bloat: BloatThreshold = field(default_factory=BloatThreshold)
    index_bloat: BloatThreshold = field(default_factory=lambda: BloatThreshold(min_ratio=0.3))
    # Every sequence's last value as a % of what its type (and its column's type) can hold.
    sequence_used_pct: Threshold = field(default_factory=lambda: Threshold(75, 90))
    # Filesystems aegisctl writes to or can see: data directory, WAL, backups, archives,
    # Barman home (% of the space in use, as df counts it).
    disk_used_pct: Threshold = field(default_factory=lambda: Threshold(80, 90))
    # Tables of at least min_size never vacuumed or never analyzed.
    unmaintained_tables: MinSize = field(default_factory=MinSize)
    # How far past its policy's max_age the oldest expired row is (rows cleanup skipped because
    # another session held them locked, or a policy that stopped running).
    retention_backlog: DurationThreshold = field(
        default_factory=lambda: DurationThreshold(2 * 86400, 7 * 86400))
    # Age of the newest verified-good backup / of the newest good restore test.
    backup_age: DurationThreshold = field(
        default_factory=lambda: DurationThreshold(36 * 3600, 72 * 3600))
    restore_test_age: DurationThreshold = field(
        default_factory=lambda: DurationThreshold(8 * 86400, 32 * 86400))
    # Local backups still waiting to be uploaded (only when backup.remote is configured):
    # more than 0 is WARNING, more than 2 CRITICAL.
    backup_pending_uploads: Threshold = field(default_factory=lambda: Threshold(0, 2))
    # Remote copies the last `backup verify --remote` found missing or damaged: any is
    # CRITICAL (more than `critical`); and the age of the last remote check that found one whole.
    backup_remote_copies: Threshold = field(default_factory=lambda: Threshold(0, 0))
    backup_remote_verify_age: DurationThreshold = field(
        default_factory=lambda: DurationThreshold(8 * 86400, 32 * 86400))
    # Months created ahead of a partitioned table (beyond the current month): fewer than
    # `warning` is WARNING, fewer than `critical` CRITICAL (inserts soon land in DEFAULT).
    partitions_ahead: Threshold = field(default_factory=lambda: Threshold(2, 1))
    # Rows in a DEFAULT partition (their month had no partition): more than `warning` is
    # WARNING, more than `critical` CRITICAL. `maint partitions` moves them.
    default_partition_rows: Threshold = field(default_factory=lambda: Threshold(0, 10_000))
    # PgBouncer's pools for the target (only with targets.NAME.pgbouncer_admin_dsn): clients
    # waiting for a server connection, the oldest one's wait, and server connections in use
    # as a % of the pool size.
    pooler_clients_waiting: Threshold = field(default_factory=lambda: Threshold(5, 20))
    pooler_max_wait_seconds: DurationThreshold = field(
        default_factory=lambda: DurationThreshold(1, 5))
    pooler_server_used_pct: Threshold = field(default_factory=lambda: Threshold(80, 95))
    # Checks `aegisctl check` leaves out unless --only names them.
    skip: list[str] = field(default_factory=list)
    # Sessions whose application_name matches one of these LIKE patterns are not counted by
    # slow_queries, long_transactions and lock_waits (e.g. "pg_dump" during nightly backups).
    ignore_applications: list[str] = field(default_factory=list)


_LOWER_IS_WORSE = {"cache_hit_ratio", "vector_recall"}
_FEWER_IS_WORSE = {"partitions_ahead"}


def check_thresholds(settings: ChecksSettings, origin: str) -> None:
    """Refuse thresholds that cannot mean anything (called from the config validator)."""
    problems = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if not hasattr(value, "warning"):
            continue
        warning, critical = value.warning, value.critical
        if warning < 0 or critical < 0:
            problems.append(f"checks.{f.name}: thresholds cannot be negative")
        elif f.name in _FEWER_IS_WORSE:
            if critical > warning:
                problems.append(f"checks.{f.name}: critical ({critical}) must be at or below "
                                f"warning ({warning}): fewer is worse")
        elif f.name in _LOWER_IS_WORSE:
            if critical > warning:
                problems.append(f"checks.{f.name}: critical ({critical}) must be at or below "
                                f"warning ({warning}): lower is worse")
            if warning > 1:
                problems.append(f"checks.{f.name}: a ratio between 0 and 1, got {warning}")
        elif critical < warning:
            problems.append(f"checks.{f.name}: critical ({critical}) must be at or above "
                            f"warning ({warning})")
    if settings.database_size_pct.allocated is not None and settings.database_size_pct.allocated <= 0:
        problems.append("checks.database_size_pct.allocated: must be a positive size like 100GB")
    for name in ("table_bloat", "index_bloat"):
        ratio = getattr(settings, name).min_ratio
        if not 0 <= ratio < 1:
            problems.append(f"checks.{name}.min_ratio: a share from 0 to below 1, got {ratio}")
    for name in ("sequence_used_pct", "disk_used_pct", "pooler_server_used_pct"):
        if getattr(settings, name).critical > 100:
            problems.append(f"checks.{name}: a percentage, at most 100")
    if settings.slow_query_seconds.min_calls < 1:
        problems.append("checks.slow_query_seconds.min_calls: must be at least 1")
    if settings.vector_recall.sample < 0:
        problems.append("checks.vector_recall.sample: must be 0 (off) or more")
    if settings.vector_recall.max_rows < 0:
        problems.append("checks.vector_recall.max_rows: must be 0 or more")
    problems += filter_shape_problems(settings.vector_recall.filters)
    if problems:
        raise ConfigError(f"{origin}: {problems[0]}")


_SHAPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def filter_shape_problems(shapes: list[FilterShape]) -> list[str]:
    problems = []
    seen: set[str] = set()
    for index, shape in enumerate(shapes):
        key = f"checks.vector_recall.filters[{index}]"
        if not _SHAPE_NAME.match(shape.name):
            problems.append(f"{key}.name: 1-63 letters, digits, '_', '.' or '-', got "
                            f"{shape.name!r}")
        elif shape.name in seen:
            problems.append(f"{key}.name: '{shape.name}' is used twice")
        seen.add(shape.name)
        # A value given but empty ("" or 0s) would be dropped from the WHERE clause: the
        # shape measured would not be the one declared, so it is refused, not ignored.
        for name in ("tag", "event_type", "category"):
            value = getattr(shape, name)
            if value is not None and not value.strip():
                problems.append(f"{key}.{name}: empty; give a value or leave the key out")
            if value is not None and "\x00" in value:
                problems.append(f"{key}.{name}: contains a NUL character, which PostgreSQL "
                                "text cannot hold")
        if any("\x00" in k or "\x00" in v for k, v in shape.context.items()):
            problems.append(f"{key}.context: contains a NUL character, which PostgreSQL "
                            "text cannot hold")
        if shape.since is not None and shape.since <= 0:
            problems.append(f"{key}.since: a positive duration like 7d")
        given = [shape.tag is not None, bool(shape.context), shape.since is not None,
                 shape.event_type is not None, shape.category is not None]
        if not any(given):
            problems.append(f"{key} ({shape.name}): give at least one condition: tag, context, "
                            "since, event_type or category")
        episodic = bool(shape.context or shape.event_type)
        if episodic and shape.category:
            problems.append(f"{key} ({shape.name}): context/event_type exist on episodic "
                            "memories and category on semantic ones: no memory has both")
        elif shape.kind == "semantic" and episodic:
            problems.append(f"{key} ({shape.name}): context and event_type exist only on "
                            "episodic memories (kind: episodic)")
        elif shape.kind == "episodic" and shape.category:
            problems.append(f"{key} ({shape.name}): category exists only on semantic memories")
        if any(not k for k in shape.context):
            problems.append(f"{key}.context: keys cannot be empty")
    return problems
