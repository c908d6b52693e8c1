"""Fixtures of the diagnostics tests: sessions held open in the background, and a real streaming
standby (a second embedded PostgreSQL cloned with `pg_basebackup -R` from a first one)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aegisctl.local import EmbeddedServer


class Background:
    """Statements run on their own connections in threads (blocked or sleeping), cancelled and
    closed at the end of the test."""

    def __init__(self) -> None:
        self.conns: list[psycopg.Connection[Any]] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def connect(self, dsn: str, autocommit: bool = True) -> psycopg.Connection[Any]:
        conn = psycopg.connect(dsn, autocommit=autocommit)
        self.conns.append(conn)
        return conn

    def run(self, dsn: str, *statements: str) -> psycopg.Connection[Any]:
        conn = self.connect(dsn)
        pid = conn.info.backend_pid

        def work() -> None:
            try:
                for statement in statements:
                    conn.execute(statement)
            except psycopg.Error as exc:  # cancelled at teardown
                self.errors.append(exc)

        thread = threading.Thread(target=work, daemon=True, name=f"pid {pid}")
        thread.start()
        self.threads.append(thread)
        return conn

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.cancel_safe()
        for thread in self.threads:
            thread.join(timeout=10)
        for conn in self.conns:
            conn.close()


@pytest.fixture
def background() -> Iterator[Background]:
    sessions = Background()
    yield sessions
    sessions.close()


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Pair:
    primary: EmbeddedServer
    standby: EmbeddedServer

    def primary_uri(self) -> str:
        return self.primary.uri("postgres")

    def standby_uri(self) -> str:
        return self.standby.uri("postgres")


@pytest.fixture(scope="module")
def replica_pair() -> Iterator[Pair]:
    """A primary and its streaming standby (as in test_local's health test), for the module."""
    base = Path(tempfile.mkdtemp(prefix="aegisctl-diag-"))
    base.chmod(0o755)
    primary = EmbeddedServer(base / "pgdata", database="postgres")
    status = primary.ensure_running()
    standby_parent = base / "standby"
    standby_parent.mkdir(mode=0o755)
    ids = primary._service_uid()
    if ids:
        os.chown(standby_parent, *ids)
    primary._run([primary._bin("pg_basebackup"), "-D", str(standby_parent / "pgdata"), "-R",
                  "-X", "stream", "-c", "fast", "-h", str(status.socket_dir), "-U", "postgres"],
                 "clone a standby")
    standby = EmbeddedServer(standby_parent / "pgdata", database="postgres")
    try:
        standby.ensure_running()
        yield Pair(primary, standby)
    finally:
        standby.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)
