"""The `partitions:` section of the configuration: tables kept range-partitioned by month.

    partitions:
      api_usage_events: {column: created_at, interval: month, premake: 3, retention: 13mo}

Imports nothing but the standard library and aegisctl.units, so loading the config stays
cheap. The names are checked against the catalog before a statement uses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aegisctl.errors import ConfigError
from aegisctl.units import parse_age

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
INTERVALS = ("month",)
MAX_PREMAKE = 120


@dataclass
class PartitionSpec:
    column: str  # a timestamptz, timestamp or date column; NOT NULL in every row
    table: str | None = None  # default: the entry's name
    schema: str = "public"
    interval: str = "month"  # one partition per calendar month (UTC)
    # `maint partitions` keeps this many months beyond the current one created ahead.
    premake: int = 3
    # Rows outside every partition land in a DEFAULT partition instead of failing the insert;
    # `maint partitions` moves them into their month's partition.
    default_partition: bool = True
    # Whole months older than this are dropped by `cleanup run` (a retention policy of the
    # same table in cleanup.policies takes precedence). None: keep everything.
    retention: str | None = None

    def table_name(self, entry: str) -> str:
        return self.table or entry


def check_partition_settings(specs: dict[str, PartitionSpec], origin: str) -> None:
    """What can be checked without a database. Called by the config loader."""
    seen: dict[tuple[str, str], str] = {}
    for name, spec in specs.items():
        where = f"{origin}: partitions.{name}"
        if not _NAME.match(name):
            raise ConfigError(f"{where}: an entry name may hold letters, digits, _ . - only")
        if spec.interval not in INTERVALS:
            raise ConfigError(f"{where}.interval: '{spec.interval}' is not supported; use "
                              f"{' or '.join(INTERVALS)}")
        if not 1 <= spec.premake <= MAX_PREMAKE:
            raise ConfigError(f"{where}.premake: between 1 and {MAX_PREMAKE} months, got "
                              f"{spec.premake}")
        if not spec.column.strip():
            raise ConfigError(f"{where}.column: name the time column to partition by")
        if spec.retention is not None:
            try:
                age = parse_age(spec.retention)
            except ValueError as exc:
                raise ConfigError(f"{where}.retention: {exc}") from None
            if age.months == 0:
                raise ConfigError(f"{where}.retention: partitions are retired by the month: "
                                  f"write months or years (13mo, 1y), got '{spec.retention}'")
        key = (spec.schema, spec.table_name(name))
        if key in seen:
            raise ConfigError(f"{where}: table {key[0]}.{key[1]} is already configured by "
                              f"partitions.{seen[key]}")
        seen[key] = name
