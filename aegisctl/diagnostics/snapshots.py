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
    from aegisctl.diagnostics.checks import CheckContext

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def snapshot_path(ctx: CheckContext, name: str) -> Path:
    """The file of one check's snapshot for the context's target. The target name comes from
    the config: anything but [A-Za-z0-9_.-] is replaced and a hash keeps names apart."""
    from aegisctl.paths import state_dir

    target = ctx.target.name
    safe = _SAFE.sub("_", target)[:60]
    if safe != target or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(target.encode()).hexdigest()[:8]}"
    return state_dir(ctx.loaded.settings) / "check" / f"{safe}-{name}.json"


def database_identity(ctx: CheckContext) -> list[Any]:
    if "database_identity" not in ctx.memo:
        row = ctx.one("SELECT (SELECT system_identifier::text FROM pg_control_system()), "
                      "current_database(), (SELECT oid::bigint FROM pg_database "
                      "WHERE datname = current_database())")
        ctx.memo["database_identity"] = list(row)
    identity: list[Any] = ctx.memo["database_identity"]
    return identity


def load_snapshot(ctx: CheckContext, name: str) -> dict[str, Any] | None:
    """The previous run's figures for this database, or None (first run, another database,
    or an unreadable file: a snapshot is a convenience, never a reason to fail a check)."""
    path = snapshot_path(ctx, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("database") != database_identity(ctx):
        return None
    figures = data.get("figures")
    return figures if isinstance(figures, dict) else None


def save_snapshot(ctx: CheckContext, name: str, figures: dict[str, Any]) -> None:
    """Written to a temporary name and renamed into place; a folder that cannot be written
    leaves the previous snapshot (the next run then judges a longer window)."""
    path = snapshot_path(ctx, name)
    payload = json.dumps({"database": database_identity(ctx), "figures": figures})
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
