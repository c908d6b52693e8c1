"""What a check remembers between runs: a small JSON file per target and check in the state
folder (`<state>/check/<target>-<name>.json`).

Cumulative statistics (pg_stat_statements, index scan counters) only say what happened since
they were reset; a check that judges "since the previous run" keeps the previous figures here.
A snapshot is bound to one database (system identifier, database name and oid): one taken on
another server or on a re-created database is ignored, never compared against.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg

    from aegisctl.config import Settings
    from aegisctl.diagnostics.checks import CheckContext

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def snapshot_path(settings: Settings, target: str, name: str) -> Path:
    """The file of one check's snapshot for a target. The target name comes from the config:
    anything but [A-Za-z0-9_.-] is replaced and a hash keeps names apart."""
    from aegisctl.paths import state_dir

    safe = _SAFE.sub("_", target)[:60]
    if safe != target or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(target.encode()).hexdigest()[:8]}"
    return state_dir(settings) / "check" / f"{safe}-{name}.json"


def _identity(conn: psycopg.Connection[Any]) -> list[Any]:
    row = conn.execute("SELECT (SELECT system_identifier::text FROM pg_control_system()), "
                       "current_database(), (SELECT oid::bigint FROM pg_database "
                       "WHERE datname = current_database())").fetchone()
    return list(row) if row else []


def database_identity(ctx: CheckContext) -> list[Any]:
    if "database_identity" not in ctx.memo:
        ctx.memo["database_identity"] = _identity(ctx.db)
    identity: list[Any] = ctx.memo["database_identity"]
    return identity


def read_snapshot(path: Path, identity: list[Any]) -> dict[str, Any] | None:
    """The figures saved at `path` for this database, or None (first run, another database,
    or an unreadable file: a snapshot is a convenience, never a reason to fail a check)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("database") != identity:
        return None
    figures = data.get("figures")
    return figures if isinstance(figures, dict) else None


def write_snapshot(path: Path, identity: list[Any], figures: dict[str, Any]) -> None:
    """Written to a temporary name and renamed into place; a folder that cannot be written
    leaves the previous snapshot (the next run then judges a longer window)."""
    payload = json.dumps({"database": identity, "figures": figures})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def load_snapshot(ctx: CheckContext, name: str) -> dict[str, Any] | None:
    return read_snapshot(snapshot_path(ctx.loaded.settings, ctx.target.name, name),
                         database_identity(ctx))


def save_snapshot(ctx: CheckContext, name: str, figures: dict[str, Any]) -> None:
    write_snapshot(snapshot_path(ctx.loaded.settings, ctx.target.name, name),
                   database_identity(ctx), figures)


def update_snapshot(conn: psycopg.Connection[Any], settings: Settings, target: str, name: str,
                    change: Callable[[dict[str, Any]], None]) -> None:
    """Read, change and write back one snapshot outside a check run (e.g. `diag`)."""
    identity = _identity(conn)
    path = snapshot_path(settings, target, name)
    figures = read_snapshot(path, identity) or {}
    change(figures)
    write_snapshot(path, identity, figures)
