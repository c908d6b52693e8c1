"""`python bench/physical.py --offsite`: physical backups off the machine (see physical.py's
docstring, measurements 4-6). The store is moto's S3 server in its own process (a real HTTP
endpoint on this machine: no network in the way, so the figures are the cost of aegisctl's
encryption, checksums and S3 requests, not of a WAN)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import yaml

from aegisctl.backup.crypto import generate_key_file
from aegisctl.backup.physical.backups import create_physical
from aegisctl.backup.physical.engine import engine_for
from aegisctl.backup.physical.offsite_check import remote_wal_lag
from aegisctl.backup.physical.offsite_restore import run_remote_drill
from aegisctl.backup.physical.offsite_upload import sent_wal, ship
from aegisctl.backup.physical.restore import run_drill
from aegisctl.backup.physical.setup import enable_physical
from aegisctl.backup.physical.wal import stream_wal
from aegisctl.config import SchemaSettings, load_config
from aegisctl.local import EmbeddedServer
from aegisctl.schema import init_schema
from aegisctl.targets import resolve_target


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto did not start")


def offsite(args: Any, load: Callable[[psycopg.Connection[Any], int], None], dim: int) -> None:
    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ[name] = value
    base = Path(tempfile.mkdtemp(prefix="aegisctl-bench-offsite-"))
    base.chmod(0o755)
    moto, url = _moto(base / "moto.log")
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="aegis-bench")
    key = base / "backup.key"
    generate_key_file(key)
    settings: dict[str, Any] = {
        "embedded": {"data_dir": str(base / "pgdata"), "database": "aegis"},
        "backup": {"directory": str(base / "backups"),
                   "remote": {"endpoint_url": url, "bucket": "aegis-bench", "prefix": "b/"},
                   "encryption": {"key_file": str(key)},
                   "physical": {"directory": str(base / "barman"), "archive_interval": "5s",
                                "remote": {"upload": False}}}}
    local_only = base / "local.yaml"
    local_only.write_text(yaml.safe_dump(settings))
    settings["backup"]["physical"]["remote"] = {"upload": True}
    config = base / "aegisctl.yaml"
    config.write_text(yaml.safe_dump(settings))
    fresh = dict(settings, embedded={"data_dir": str(base / "fresh" / "pgdata"),
                                     "database": "aegis"})
    fresh["backup"] = dict(settings["backup"], directory=str(base / "fresh" / "backups"),
                           physical={})
    fresh_config = base / "fresh.yaml"
    (base / "fresh").mkdir(mode=0o755)
    fresh_config.write_text(yaml.safe_dump(fresh))

    loaded_local, loaded = load_config(str(local_only)), load_config(str(config))
    target = resolve_target(loaded, env={})
    server = EmbeddedServer(base / "pgdata", database="aegis")
    server.ensure_running()
    uri = server.uri()
    report: dict[str, Any] = {"rows": args.rows, "dim": dim, "store": "moto server (local)",
                              "embeddings": "48-d latent topics projected to 1536-d, noise, "
                                            "normalised"}
    stop = threading.Event()
    streamer: threading.Thread | None = None
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            init_schema(conn, SchemaSettings(embedding_dim=dim), wait_lock=60)
            load(conn, args.rows)
            report["database_bytes"] = conn.execute(
                "SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
            conn.execute("CHECKPOINT")
        print(f"database: {report['database_bytes'] / 1e9:.2f} GB", flush=True)

        # The floor: a plain copy of the data directory on this disk, in this run.
        copy = base / "rawcopy"
        t = time.perf_counter()
        subprocess.run(["cp", "-a", str(base / "pgdata"), str(copy)], check=True)
        subprocess.run(["sync"], check=True)
        report["raw_copy_seconds"] = round(time.perf_counter() - t, 1)
        shutil.rmtree(copy)

        enable_physical(loaded_local, target)
        engine = engine_for(loaded_local, target)
        # Local only first: the backup's own time, then its upload on its own.
        streamer = threading.Thread(target=stream_wal, args=(loaded_local, target),
                                    kwargs={"stop": stop}, daemon=True)
        streamer.start()
        time.sleep(3)
        full = create_physical(loaded_local, target, verify=False)
        report["local_full_backup"] = {"seconds": round(full.duration_seconds, 1),
                                       "bytes": full.backup.size}
        t = time.perf_counter()
        shipped = ship(loaded, target, engine=engine)
        seconds = time.perf_counter() - t
        report["upload_full_and_wal"] = {
            "seconds": round(seconds, 1), "bytes_sent": shipped.bytes_sent,
            "wal_files": shipped.wal_files, "ok": shipped.ok,
            "MB_per_s": round(shipped.bytes_sent / seconds / 1e6, 1),
            "vs_local_backup": round(seconds / full.duration_seconds, 2),
            "vs_raw_copy": round(seconds / report["raw_copy_seconds"], 2)}
        print(json.dumps(report, default=str), flush=True)

        # 5. drills to a moment: from the local copy, then from the store alone.
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("INSERT INTO episodic_memory (event_type, summary) "
                         "VALUES ('marker', 'bench marker')")
            time.sleep(1.1)
            moment = dt.datetime.now(dt.UTC)
            time.sleep(1.1)
            conn.execute("DELETE FROM episodic_memory WHERE event_type = 'chat'")
        local_drill = run_drill(loaded_local, target, to_time=moment)
        from aegisctl.backup.physical.wal import switch_and_archive

        switch_and_archive(engine)
        ship(loaded, target, engine=engine)
        fresh_loaded = load_config(str(fresh_config))
        fresh_target = resolve_target(fresh_loaded, env={})
        remote_drill = run_remote_drill(fresh_loaded, fresh_target, to_time=moment)
        report["drill_local"] = {"ok": local_drill.ok,
                                 "seconds": round(local_drill.total_seconds, 1),
                                 "restore_seconds": round(local_drill.restore_seconds, 1)}
        report["drill_from_store"] = {"ok": remote_drill.ok,
                                      "seconds": round(remote_drill.total_seconds, 1),
                                      "restore_seconds": round(remote_drill.restore_seconds, 1),
                                      "checks": [(c.name, c.ok) for c in remote_drill.checks]}
        report["drill_store_vs_local"] = round(remote_drill.total_seconds
                                               / local_drill.total_seconds, 2)
        print(json.dumps(report, default=str), flush=True)

        # 6. RPO under a steady insert load, WAL shipped beside the streamer.
        stop.set()
        streamer.join(120)
        stop = threading.Event()
        streamer = threading.Thread(target=stream_wal, args=(loaded, target),
                                    kwargs={"stop": stop}, daemon=True)
        streamer.start()
        report["rpo"] = _rpo_under_load(uri, loaded, engine, args.load_seconds)
        print(json.dumps(report, indent=2, default=str), flush=True)
    finally:
        stop.set()
        if streamer is not None:
            streamer.join(120)
        server.stop()
        moto.terminate()
        moto.wait(30)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def _rpo_under_load(uri: str, loaded: Any, engine: Any, seconds: float) -> dict[str, Any]:
    """Insert memories at a steady rate; every second, how far the store is behind: the lag
    `check` reports, and the age of the newest WAL in the store (what a dead host loses)."""
    done = threading.Event()
    inserted = [0]

    def writer() -> None:
        with psycopg.connect(uri, autocommit=True) as conn:
            while not done.is_set():
                conn.execute(  # distinct summaries: the schema refuses duplicate content
                    "INSERT INTO episodic_memory (event_type, summary, embedding) SELECT "
                    "'chat', 'load ' || %s::text || '-' || g, (SELECT array_agg(random() "
                    "+ 0 * x + 0 * g) FROM generate_series(1, 1536) x)::vector "
                    "FROM generate_series(1, 20) g", (inserted[0],))
                inserted[0] += 20
                time.sleep(0.05)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    lag_s, lag_b, age = [], [], []
    started = time.monotonic()
    written_before = _wal_lsn(uri)
    try:
        while time.monotonic() - started < seconds:
            time.sleep(1)
            lag = remote_wal_lag(loaded, engine)
            lag_s.append(lag.lag_seconds)
            lag_b.append(lag.lag_bytes)
            sent = sent_wal(engine)
            newest = max((s.archived_at for s in sent.values()), default=None)
            if newest is not None:
                age.append(time.time() - newest)
    finally:
        done.set()
        thread.join(30)
    wal_bytes = _wal_lsn(uri) - written_before
    return {"load_seconds": seconds, "rows_inserted": inserted[0],
            "wal_MB_per_s": round(wal_bytes / seconds / 1e6, 2),
            "archive_interval_s": loaded.settings.backup.physical.archive_interval,
            "check_lag_seconds": {"p50": round(statistics.median(lag_s), 1),
                                  "max": round(max(lag_s), 1)},
            "check_lag_bytes": {"p50": int(statistics.median(lag_b)), "max": max(lag_b)},
            "newest_remote_wal_age_seconds": {
                "p50": round(statistics.median(age), 1) if age else None,
                "max": round(max(age), 1) if age else None}}


def _wal_lsn(uri: str) -> int:
    with psycopg.connect(uri, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
                           ).fetchone()
    return int(row[0]) if row else 0
