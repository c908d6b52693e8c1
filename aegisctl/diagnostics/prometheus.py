"""`check --prometheus FILE`: the measurements for node_exporter's textfile collector.

Prometheus' naming conventions: base units (seconds, bytes), ratios from 0 to 1 (a percentage
is divided by 100), one metric family per measured quantity, named for it (no `unit` label),
and a status gauge per check (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN). Thresholds are one family
per unit. The shipped alerting rules (prometheus/aegisctl-rules.yml) read these names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from aegisctl.errors import UsageError

if TYPE_CHECKING:
    from aegisctl.diagnostics.checks import CheckReport, CheckResult

# The quantity each check measures. A check missing here (added by another module) gets
# aegisctl_check_<name> with its unit's suffix.
METRICS = {
    "connection": "aegisctl_connect_duration_seconds",
    "connections": "aegisctl_connections_used_ratio",
    "cache_hit_ratio": "aegisctl_cache_hit_ratio",
    "slow_queries": "aegisctl_longest_query_duration_seconds",
    "slow_statements": "aegisctl_slowest_statement_mean_seconds",
    "long_transactions": "aegisctl_oldest_transaction_age_seconds",
    "lock_waits": "aegisctl_longest_lock_wait_seconds",
    "database_size": "aegisctl_database_size_allocated_ratio",
    "replication_lag": "aegisctl_replication_lag_seconds",
    "replica_count": "aegisctl_streaming_standbys",
    "wal_receivers": "aegisctl_wal_receiver_flush_lag_bytes",
    "replication_slots": "aegisctl_inactive_slot_retained_wal_bytes",
    "wraparound": "aegisctl_oldest_xid_age_transactions",
    "invalid_indexes": "aegisctl_invalid_indexes",
    "vector_indexes_invalid": "aegisctl_vector_indexes_invalid",
    "vector_indexes_unused": "aegisctl_vector_indexes_unused",
    "vector_recall": "aegisctl_vector_recall_ratio",
    "known_bad_versions": "aegisctl_known_bad_versions",
    "vector_recall_filtered": "aegisctl_vector_recall_filtered_ratio",
    "table_bloat": "aegisctl_table_bloat_bytes",
    "index_bloat": "aegisctl_index_bloat_bytes",
    "sequences": "aegisctl_sequence_used_ratio",
    "unmaintained_tables": "aegisctl_unmaintained_tables",
    "disk_space": "aegisctl_disk_used_ratio",
    "backup_age": "aegisctl_backup_age_seconds",
    "restore_test_age": "aegisctl_restore_test_age_seconds",
    "backup_pending_uploads": "aegisctl_backup_pending_uploads",
    "cluster_leader": "aegisctl_cluster_leader_present",
    "cluster_paused": "aegisctl_cluster_paused",
    "cluster_pending_restart": "aegisctl_cluster_members_pending_restart",
    "cluster_switchover": "aegisctl_cluster_switchover_scheduled",
    "cluster_timeline": "aegisctl_cluster_timeline",
    "cluster_lag": "aegisctl_cluster_member_lag_bytes",
    "backup_remote_copies": "aegisctl_backup_remote_copies_bad",
    "backup_remote_verify_age": "aegisctl_backup_remote_verify_age_seconds",
    "retention_backlog": "aegisctl_retention_backlog_seconds",
    "pooler_clients_waiting": "aegisctl_pgbouncer_clients_waiting",
    "pooler_max_wait": "aegisctl_pgbouncer_max_wait_seconds",
    "pooler_server_connections": "aegisctl_pgbouncer_server_connections_used_ratio",
    "partitions_ahead": "aegisctl_partitions_ahead",  # label table
    "default_partition_rows": "aegisctl_default_partition_rows",  # label table
}
_SUFFIX = {"s": "_seconds", "B": "_bytes", "%": "_ratio", "": ""}
_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(result: CheckResult) -> str:
    # A labelled result (cluster_lag:pg2, member pg2; partitions_ahead:public.t, table
    # public.t) belongs to its check's one family.
    name = result.name.split(":", 1)[0] if result.labels else result.name
    if name in METRICS:
        return METRICS[name]
    base = "aegisctl_check_" + _NAME.sub("_", name).lower()
    suffix = _SUFFIX.get(result.unit, "")
    return base if base.endswith(suffix) else base + suffix


def base_value(value: float, unit: str) -> float:
    """Seconds and bytes as they are; a percentage as a ratio."""
    return value / 100 if unit == "%" else value


def write_prometheus(report: CheckReport, path: str) -> None:
    """Written atomically by prometheus_client (a temporary file renamed into place)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    destination = Path(path).expanduser()
    if not destination.parent.is_dir():
        raise UsageError(f"--prometheus: folder {destination.parent} does not exist")
    if destination.is_dir():
        raise UsageError(f"--prometheus: {destination} is a folder; give a file name ending in .prom")
    registry = CollectorRegistry()
    status = Gauge("aegisctl_check_status", "Check status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
                   ["target", "check"], registry=registry)
    up = Gauge("aegisctl_target_up", "1 when the target's database answered",
               ["target"], registry=registry)
    overall = Gauge("aegisctl_check_overall_status", "The worst status over every check",
                    registry=registry)
    stamp = Gauge("aegisctl_check_last_run_timestamp_seconds", "When the checks ran",
                  registry=registry)
    families: dict[str, Gauge] = {}

    def family(name: str, help_text: str, labels: list[str]) -> Gauge:
        if name not in families:
            families[name] = Gauge(name, help_text, labels, registry=registry)
        return families[name]

    for t in report.targets:
        up.labels(t.target).set(1 if t.reachable else 0)
        for r in t.results:
            status.labels(t.target, r.name).set(int(r.status))
            if r.value is not None:
                extra = sorted(r.labels)
                family(metric_name(r), f"aegisctl check {r.name.split(':', 1)[0]}: the "
                       "measured value", ["target", *extra]).labels(
                    t.target, *(r.labels[k] for k in extra)).set(base_value(r.value, r.unit))
            for level, threshold in (("warning", r.warning), ("critical", r.critical)):
                if threshold is None:
                    continue
                name = f"aegisctl_check_{level}_threshold{_SUFFIX.get(r.unit, '')}"
                family(name, f"The {level} threshold of each check, in the check's unit",
                       ["target", "check"]).labels(t.target, r.name).set(
                           base_value(threshold, r.unit))
    overall.set(int(report.status))
    stamp.set(report.checked_at.timestamp())
    try:
        write_to_textfile(str(destination), registry)
    except OSError as exc:
        raise UsageError(f"--prometheus: cannot write {destination}: {exc.strerror}") from None
