"""The `cleanup:` section of the configuration: retention policies and how deletes are paced.

Imports nothing but the standard library and aegisctl.units, so loading the config stays
cheap. Identifiers here are checked against the catalog before any statement uses them
(aegisctl.retention.catalog); this module checks what can be checked without a database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from aegisctl.errors import ConfigError
from aegisctl.maintenance.partition_settings import PartitionSpec
from aegisctl.units import parse_age

Duration = Annotated[float, "duration"]
Size = Annotated[int, "size"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class PolicySettings:
    table: str
    column: str  # a timestamptz, timestamp or date column
    max_age: str  # 30d, 6mo, 13mo, 1y: months and years are calendar months (units.parse_age)
    schema: str = "public"
    # Structured exemptions, never SQL: rows whose column holds one of these values are kept
    # (e.g. importance: [high, critical]).
    keep: dict[str, list[str]] = field(default_factory=dict)
    # Rows that a foreign key of one of these tables points at are kept (e.g. decision_outcomes
    # for the episodic events its decisions refer to). The key is found in the catalog.
    keep_referenced_by: list[str] = field(default_factory=list)
    # Write every deleted row to a compressed JSON-lines archive first (and upload it to the
    # backup remote when one is configured).
    archive: bool = False
    enabled: bool = True


@dataclass
class CleanupSettings:
    batch_size: int = 5000
    min_batch_size: int = 100
    # A batch that takes longer than this shrinks the next one (and a quick one grows it back
    # up to batch_size): each batch is its own short transaction.
    max_batch_time: Duration = 0.5
    pause: Duration = 0.0  # sleep between batches
    lock_timeout: Duration = 1.0  # per batch: a row or table lock we cannot get soon -> retry
    statement_timeout: Duration = 10.0  # per batch
    # Replication: batches shrink and wait while a streaming standby's replay lag is above
    # either bound (read from pg_stat_replication on the primary). replica: the standby's
    # application_name there; null -> every attached standby.
    replica: str | None = None
    max_replica_lag: Size = 16 * 1024 * 1024
    max_replica_lag_time: Duration = 10.0
    lag_wait_limit: Duration = 600.0  # give up (exit 1) after waiting this long for a standby
    # Where archives go: <archive_dir>/<policy>/<table>-<run>.jsonl.gz. None -> the target's
    # backup folder, subfolder cleanup-archive.
    archive_dir: str | None = None
    upload_archives: bool = True  # to backup.remote, when one is configured
    # After deleting at least this fraction of a table with an HNSW index, rebuild the index
    # concurrently before vacuuming (vacuuming HNSW after a mass delete is slow).
    reindex_fraction: float = 0.2
    vacuum: bool = True  # VACUUM (ANALYZE) each table rows were deleted from
    # The rows of a dropped partition: "exact" counts them after the DETACH (a scan of the
    # month: cheap next to a DELETE, yet most of a drop's cost); "estimate" reports the
    # planner's estimate (pg_class.reltuples) and says so. An archived partition is always
    # counted exactly, by its archive.
    partition_row_counts: Literal["exact", "estimate"] = "exact"
    policies: dict[str, PolicySettings] = field(default_factory=dict)


def check_cleanup_settings(cleanup: CleanupSettings, origin: str) -> None:
    """What can be checked without a database: numbers, ages, names. Called by the config."""
    for key, value, low in (("batch_size", cleanup.batch_size, 1),
                            ("min_batch_size", cleanup.min_batch_size, 1)):
        if value < low:
            raise ConfigError(f"{origin}: cleanup.{key}: must be at least {low}, got {value}")
    if cleanup.min_batch_size > cleanup.batch_size:
        raise ConfigError(f"{origin}: cleanup.min_batch_size ({cleanup.min_batch_size}) is "
                          f"larger than cleanup.batch_size ({cleanup.batch_size})")
    if not 0 < cleanup.reindex_fraction <= 1:
        raise ConfigError(f"{origin}: cleanup.reindex_fraction: must be in (0, 1], got "
                          f"{cleanup.reindex_fraction}")
    if cleanup.lock_timeout <= 0 or cleanup.statement_timeout <= 0:
        raise ConfigError(f"{origin}: cleanup.lock_timeout and cleanup.statement_timeout must "
                          "be greater than zero: a batch must never wait without bound")
    for name, policy in cleanup.policies.items():
        where = f"{origin}: cleanup.policies.{name}"
        if not _NAME.match(name):
            raise ConfigError(f"{where}: a policy name may hold letters, digits, _ . - only")
        try:
            parse_age(policy.max_age)
        except ValueError as exc:
            raise ConfigError(f"{where}.max_age: {exc}") from None
        for column, values in policy.keep.items():
            if not values:
                raise ConfigError(f"{where}.keep.{column}: list at least one value")
            if column == policy.column:
                raise ConfigError(f"{where}.keep.{column}: cannot exempt on the age column")


def effective_policies(cleanup: CleanupSettings,
                       partitions: dict[str, PartitionSpec]) -> dict[str, PolicySettings]:
    """cleanup.policies, plus one policy per `partitions:` entry with a retention whose table
    no cleanup policy covers (named after the entry): months are retired by `cleanup run`."""
    policies = dict(cleanup.policies)
    covered = {(p.schema, p.table) for p in policies.values()}
    for entry, spec in partitions.items():
        table = spec.table_name(entry)
        if spec.retention is None or (spec.schema, table) in covered:
            continue
        name = entry if entry not in policies else f"partitions.{entry}"
        policies[name] = PolicySettings(table=table, column=spec.column,
                                        max_age=spec.retention, schema=spec.schema)
    return policies


def check_partition_retention(cleanup: CleanupSettings, partitions: dict[str, PartitionSpec],
                              origin: str) -> None:
    """One table, one retention: a partitions entry and a cleanup policy may both name it only
    with the same age."""
    for entry, spec in partitions.items():
        if spec.retention is None:
            continue
        for name, policy in cleanup.policies.items():
            same = (policy.schema, policy.table) == (spec.schema, spec.table_name(entry))
            if same and (parse_age(policy.max_age).months, parse_age(policy.max_age).seconds) \
                    != (parse_age(spec.retention).months, parse_age(spec.retention).seconds):
                raise ConfigError(
                    f"{origin}: partitions.{entry}.retention ({spec.retention}) and "
                    f"cleanup.policies.{name}.max_age ({policy.max_age}) disagree about "
                    f"{policy.table}: keep one of them, or make them equal")
