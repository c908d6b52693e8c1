"""`aegisctl check`: free space on the filesystems aegisctl writes to or can see (statvfs).

The embedded server's data directory and its WAL (pg_wal may be a link to another disk), a
local server's data directory when connected through its Unix socket (same machine), the
backup folder, the cleanup archive folder and Barman's home. A folder not created yet is judged
by the filesystem it will be created on. Each filesystem is reported once, with every use of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    grade,
    register_check,
)
from aegisctl.units import format_bytes


@dataclass
class Filesystem:
    device: int
    used_pct: float
    size: int
    free: int
    uses: list[str] = field(default_factory=list)


def _existing(path: Path) -> Path | None:
    """The path, or its nearest existing parent (where it would be created)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def watched_paths(ctx: CheckContext) -> list[tuple[str, Path]]:
    from aegisctl import paths

    settings = ctx.loaded.settings
    found: list[tuple[str, Path]] = []
    configured = {key.split(".")[0] for key in ctx.loaded.sources}
    if ctx.target.embedded:
        data = paths.data_dir(settings.embedded.data_dir)
        found += [("data directory", data), ("WAL", data / "pg_wal")]
    elif ctx.conn is not None and (ctx.conn.info.host or "").startswith("/"):
        # Connected through a Unix socket: the server runs on this machine.
        row = ctx.conn.execute("SELECT current_setting('data_directory', true)").fetchone()
        if row and row[0]:
            data = Path(row[0])
            found += [("data directory", data), ("WAL", data / "pg_wal")]
    backups = paths.backup_root(settings)
    if "backup" in configured or backups.exists():
        found.append(("backups", backups))
    archive = paths.archive_root(settings, ctx.target.name)
    if settings.cleanup.archive_dir or archive.exists():
        found.append(("cleanup archive", archive))
    barman = paths.barman_home(settings, ctx.target.name)
    if barman.exists():
        found.append(("Barman home", barman))
    return found


def filesystems(watched: list[tuple[str, Path]]) -> list[Filesystem]:
    by_device: dict[int, Filesystem] = {}
    for what, path in watched:
        try:
            real = _existing(path.resolve())
            if real is None:
                continue
            stat = os.statvfs(real)
            device = real.stat().st_dev
        except OSError:
            continue  # a folder this user cannot see: nothing to measure there
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        available = stat.f_bavail * stat.f_frsize
        # As df counts it: the space reserved for root is not available to the server.
        pct = round(100.0 * used / (used + available), 1) if used + available else 0.0
        fs = by_device.setdefault(device, Filesystem(device, pct, stat.f_blocks * stat.f_frsize,
                                                     available))
        fs.uses.append(f"{what} {path}")
    return sorted(by_device.values(), key=lambda f: -f.used_pct)


@register_check("disk_space", "the fullest filesystem of the data directory, WAL, backups, "
                "cleanup archives and Barman home", needs_db=False)
def disk_space(ctx: CheckContext) -> CheckResult:
    found = filesystems(watched_paths(ctx))
    if not found:
        raise CheckSkipped("no folder of this target is visible from here (a remote server "
                           "without backups here)")
    t = ctx.settings.disk_used_pct
    worst = found[0]
    message = "; ".join(f"{', '.join(f.uses)}: {f.used_pct:g}% of {format_bytes(f.size)} used, "
                        f"{format_bytes(f.free)} free" for f in found)
    return grade("disk_space", worst.used_pct, t.warning, t.critical, unit="%", minimum=0,
                 maximum=100, message=message)
