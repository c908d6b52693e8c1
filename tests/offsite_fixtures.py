"""A dedicated embedded server with physical backups enabled, WAL streamed, and the store of
backup.remote (moto's S3 server) with an encryption key: physical backups off the machine."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from physical_fixtures import PhysicalEnv, insert_rows

from aegisctl.backup.crypto import generate_key_file
from aegisctl.backup.physical.engine import engine_for
from aegisctl.backup.physical.setup import enable_physical
from aegisctl.config import load_config
from aegisctl.local import EmbeddedServer
from aegisctl.targets import resolve_target

PREFIX = "prod/"


@dataclass
class OffsiteEnv(PhysicalEnv):
    endpoint: str = ""
    bucket: str = ""
    key: Path = Path()
    settings: dict[str, Any] | None = None

    def s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def objects(self) -> dict[str, int]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                  Prefix=PREFIX)
        return {o["Key"]: o["Size"] for p in pages for o in p.get("Contents", [])}

    def variant(self, name: str, **changes: Any) -> Path:
        """Another config file: this one's settings with `changes` (dotted keys) applied."""
        import copy

        data = copy.deepcopy(self.settings or {})
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            if value is None:
                node.pop(last, None)
            else:
                node[last] = value
        path = self.base / name
        path.write_text(yaml.safe_dump(data))
        return path

    def fresh_machine(self, name: str, key: Path | None = None) -> Path:
        """The config of a machine that has only the config and the key: new folders for the
        database, the backups and Barman (nothing installed there)."""
        folder = self.base / name
        folder.mkdir(mode=0o755)
        return self.variant(f"{name}.yaml", **{
            "embedded.data_dir": str(folder / "pgdata"),
            "backup.directory": str(folder / "backups"),
            "backup.physical": {"remote": {"volume_size": "2MB"}},
            "backup.encryption": {"key_file": str(key or self.key)}})


@pytest.fixture(scope="module")
def offsite_env(s3_endpoint: str) -> Iterator[OffsiteEnv]:
    import boto3

    patch = pytest.MonkeyPatch()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        patch.setenv(name, value)
    patch.delenv("AWS_PROFILE", raising=False)
    bucket = f"aegis-physical-{random.randrange(1 << 30):x}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    base = Path(tempfile.mkdtemp(prefix="aegisctl-offsite-"))
    base.chmod(0o755)
    key = base / "backup.key"
    generate_key_file(key)
    settings: dict[str, Any] = {
        "embedded": {"data_dir": str(base / "pgdata"), "database": "aegis"},
        "backup": {
            "directory": str(base / "backups"),
            "remote": {"endpoint_url": s3_endpoint, "bucket": bucket, "prefix": PREFIX,
                       "retention": {"keep_days": 0, "min_keep": 1}},
            "encryption": {"key_file": str(key)},
            "physical": {"directory": str(base / "barman"), "archive_interval": "2s",
                         "max_slot_wal_keep_size": "2GB",
                         "remote": {"volume_size": "2MB", "max_wal_lag": "10m",
                                    "max_wal_lag_bytes": "8MB"}},
        },
    }
    config = base / "aegisctl.yaml"
    config.write_text(yaml.safe_dump(settings))
    loaded = load_config(str(config))
    target = resolve_target(loaded, env={})
    server = EmbeddedServer(base / "pgdata", database="aegis")
    server.ensure_running()
    env = OffsiteEnv(base, config, loaded, target, engine_for(loaded, target), server,
                     endpoint=s3_endpoint, bucket=bucket, key=key, settings=settings)
    try:
        result = enable_physical(loaded, target)
        assert result.configured, result.to_json()
        env.engine = engine_for(loaded, target)
        with env.connect() as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute("CREATE TABLE mem (id bigserial PRIMARY KEY, note text NOT NULL, "
                         "emb vector(1536))")
            insert_rows(conn, 300, "base")
            conn.execute("CREATE INDEX mem_emb_hnsw ON mem USING hnsw (emb vector_cosine_ops)")
        env.start_streaming()
        yield env
    finally:
        env.stop_streaming()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        patch.undo()
