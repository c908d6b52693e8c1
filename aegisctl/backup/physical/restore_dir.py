"""A physical restore's target directory, safe against an interrupted restore.

Barman's `recover` writes into `<target>/.aegisctl-restoring/`, beside a marker
(`<target>/.aegisctl-restore.json`: backup, recovery target, pid, phase). Only once recover has
finished are the files moved up into `<target>` (PG_VERSION last: until then the folder is not
a data directory for PostgreSQL) and the marker removed. So a restore killed at any point never
leaves a half-restored folder that looks like a data directory; and a re-run finds the marker,
which proves the leftovers are a restore's own (the folder was empty when it began): it
finishes the move when the same restore was moving, else it removes them and starts again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from aegisctl.errors import UsageError

STAGING = ".aegisctl-restoring"
MARKER = ".aegisctl-restore.json"
_LAST = ("global", "PG_VERSION")  # moved last: what makes the folder a data directory


def read_marker(target: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(target: Path, data: dict[str, Any]) -> None:
    tmp = target / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(data))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target / MARKER)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False  # the marker is input: only a plausible other process counts
    from aegisctl.children import pid_alive

    return pid_alive(pid)


def leftovers(target: Path) -> dict[str, Any] | None:
    """The marker of an interrupted restore into `target`, or None when there is none.
    Refuses when the restore that wrote it is still running."""
    marker = read_marker(target)
    if marker is None:
        return None
    if _alive(marker.get("pid")):
        raise UsageError(f"--target-dir {target}: a restore (pid {marker.get('pid')}) is "
                         "still writing into it")
    return marker


def check_empty_or_ours(path: Path) -> dict[str, Any] | None:
    """Only an empty folder, or one holding an interrupted restore's own leftovers (proven by
    its marker), may be restored into. Returns that marker."""
    if not path.exists():
        return None
    if not path.is_dir():
        raise UsageError(f"--target-dir {path} exists and is not a directory")
    if not any(path.iterdir()):
        return None
    marker = leftovers(path)
    if marker is None:
        raise UsageError(f"--target-dir {path} is not empty: a restore never writes into "
                         "a directory that holds files")
    return marker


def clean(target: Path) -> None:
    """Remove an interrupted restore's leftovers: everything in `target` (it was empty when
    that restore began; the marker, removed last, is the proof)."""
    for child in target.iterdir():
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (target / MARKER).unlink(missing_ok=True)


def move_up(target: Path) -> None:
    """Move the recovered files from the staging folder into `target` (resumable: what was
    moved already is not there any more), fix the paths Barman wrote into the recovery
    settings, then drop the staging folder and the marker."""
    staging = target / STAGING
    if staging.is_dir():
        names = sorted(p.name for p in staging.iterdir())
        for name in [n for n in names if n not in _LAST] + [n for n in _LAST if n in names]:
            os.replace(staging / name, target / name)
        _fix_paths(target / "postgresql.auto.conf", str(staging), str(target))
        staging.rmdir()
    (target / MARKER).unlink(missing_ok=True)


def _fix_paths(conf: Path, old: str, new: str) -> None:
    """Barman's recovery settings name its WAL folder by absolute path (restore_command,
    recovery_end_command): point them at the final place."""
    with contextlib.suppress(FileNotFoundError):
        text = conf.read_text()
        if old not in text:
            return
        stat = conf.stat()
        tmp = conf.with_name(conf.name + ".aegisctl-tmp")
        tmp.write_text(text.replace(old, new))
        os.chmod(tmp, stat.st_mode & 0o7777)
        with contextlib.suppress(PermissionError):
            os.chown(tmp, stat.st_uid, stat.st_gid)
        os.replace(tmp, conf)
