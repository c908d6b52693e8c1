"""Cleanup with a real streaming standby attached: the batches throttle when its replay lag
passes cleanup.max_replica_lag (the standby is cloned with pg_basebackup, as in test_local)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from aegisctl.config import load_config
from aegisctl.errors import OperationFailed
from aegisctl.local import EmbeddedServer
from aegisctl.retention.service import CleanupOptions, run_cleanup


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    base = Path(tempfile.mkdtemp(prefix="aegisctl-standby-"))
    base.chmod(0o755)
    primary = EmbeddedServer(base / "pgdata", database="aegis")
    standby = EmbeddedServer(base / "standby" / "pgdata", database="aegis")
    try:
        status = primary.ensure_running()
        (base / "standby").mkdir(mode=0o755)
        ids = primary._service_uid()
        if ids:
            os.chown(base / "standby", *ids)
        primary._run([primary._bin("pg_basebackup"), "-D", str(standby.data_dir), "-R", "-X",
                      "stream", "-c", "fast", "-h", str(status.socket_dir), "-U", "postgres"],
                     "clone a standby")
        standby.ensure_running()
        with psycopg.connect(standby.uri(), autocommit=True) as conn:
            # Report replay progress every second (default 10 s), so a caught-up standby is
            # seen as caught up promptly.
            conn.execute("ALTER SYSTEM SET wal_receiver_status_interval = '1s'")
            conn.execute("SELECT pg_reload_conf()")
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_batches_throttle_on_standby_lag(primary_and_standby, tmp_path) -> None:
    primary, standby = primary_and_standby
    with psycopg.connect(primary.uri(), autocommit=True) as conn:
        conn.execute("CREATE TABLE metrics (id bigserial PRIMARY KEY, at timestamptz NOT NULL,"
                     " payload text)")
        conn.execute("CREATE INDEX ON metrics (at)")
        conn.execute("INSERT INTO metrics (at, payload) SELECT now() - make_interval(days => i % 60),"
                     " repeat('x', 200) FROM generate_series(1, 20000) i")
        expired = conn.execute("SELECT count(*) FROM metrics WHERE at < now() - interval '30 days'"
                               ).fetchone()[0]
        attached = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]
        assert attached == 1
        path = tmp_path / "aegisctl.yaml"
        path.write_text(yaml.safe_dump({"backup": {"directory": str(tmp_path / "b")},
                                        "cleanup": {"batch_size": 2000, "max_replica_lag": "64kB",
                                                    "vacuum": False, "lag_wait_limit": "60s",
                                                    "policies": {"m": {"table": "metrics",
                                                                       "column": "at",
                                                                       "max_age": "30d"}}}}))
        # The standby stops replaying for 2 s: the cleanup must wait for it, not run ahead.
        with psycopg.connect(standby.uri(), autocommit=True) as replica:
            replica.execute("SELECT pg_wal_replay_pause()")

        def resume() -> None:
            time.sleep(2)
            with psycopg.connect(standby.uri(), autocommit=True) as replica:
                replica.execute("SELECT pg_wal_replay_resume()")

        thread = threading.Thread(target=resume)
        thread.start()
        try:
            report = run_cleanup(load_config(str(path), env={}), "primary", conn,
                                 CleanupOptions())
        finally:
            thread.join()
        policy = report.policies[0]
        assert policy.status == "done", policy.error
        assert policy.total_deleted == expired
        assert policy.stats.throttled >= 1
        assert policy.stats.throttle_seconds >= 1.0
        assert policy.stats.max_lag_bytes > 64_000
    with psycopg.connect(standby.uri(), autocommit=True) as replica:
        assert replica.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        # Pointed at the standby, cleanup refuses up front (a dry run still counts).
        loaded = load_config(str(path), env={})
        with pytest.raises(OperationFailed, match="standby"):
            run_cleanup(loaded, "replica", replica, CleanupOptions())
        dry = run_cleanup(loaded, "replica", replica, CleanupOptions(dry_run=True))
        assert dry.policies[0].status == "dry-run"  # (the standby may still be replaying)
