"""The partition checks in the Prometheus textfile: one metric family per check with a `table`
label (not one family per table, which no alert rule or dashboard could cover), lint-clean
for `promtool check metrics`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

TABLES = ("public.events_a", "public.events_b")


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return found


def test_partition_checks_are_one_family_each_labelled_by_table(
        cli, write_config, aegis_db, aegis_dsn, tmp_path: Path, promtool: str) -> None:
    conn = aegis_db
    conn.autocommit = True
    conn.execute("SET TIME ZONE 'UTC'")
    for ahead, name in enumerate(("events_a", "events_b"), start=1):
        conn.execute(f"CREATE TABLE {name} (at timestamptz NOT NULL) PARTITION BY RANGE (at)")
        conn.execute(f"CREATE TABLE {name}_default PARTITION OF {name} DEFAULT")
        for month in range(ahead + 1):  # the current month and `ahead` after it
            conn.execute(
                f"CREATE TABLE {name}_{month} PARTITION OF {name} FOR VALUES FROM"
                f" (date_trunc('month', now()) + make_interval(months => {month}))"
                f" TO (date_trunc('month', now()) + make_interval(months => {month + 1}))")
    conn.execute("INSERT INTO events_b VALUES ('1999-01-01')")  # lands in the DEFAULT
    config = write_config({"targets": {"primary": {"dsn": aegis_dsn}},
                           "backup": {"directory": str(tmp_path / "backups")}})
    out = tmp_path / "aegisctl.prom"
    run = cli("--config", str(config), "check", "--only", "partitions_ahead", "--only",
              "default_partition_rows", "--prometheus", str(out), "--format", "json")
    assert run.exit_code in (1, 2), run.output
    checks = {c["name"]: c for c in json.loads(run.stdout)["targets"][0]["checks"]}
    assert checks["partitions_ahead:public.events_b"]["labels"] == {"table": "public.events_b"}

    text = out.read_text()
    linted = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True)
    assert linted.returncode == 0 and not (linted.stdout + linted.stderr).strip(), \
        linted.stdout + linted.stderr
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert not [name for name in families if "events" in name]
    ahead = {s.labels["table"]: s.value for s in families["aegisctl_partitions_ahead"].samples
             if s.labels["table"] in TABLES}
    assert ahead == {"public.events_a": 1, "public.events_b": 2}
    rows = {s.labels["table"]: s.value
            for s in families["aegisctl_default_partition_rows"].samples
            if s.labels["table"] in TABLES}
    assert rows == {"public.events_a": 0, "public.events_b": 1}
    assert all(set(s.labels) == {"target", "table"}
               for s in families["aegisctl_partitions_ahead"].samples)
