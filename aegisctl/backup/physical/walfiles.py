"""Barman's catalogue of archived WAL files: read by the WAL status, the backup listing's
recoverable window and restores (its own module, so backups and wal need not import each
other)."""

from __future__ import annotations

from aegisctl.backup.physical.engine import Engine


def archived_wals(engine: Engine) -> list[tuple[str, int, float]]:
    """(segment, size, mtime) of every archived WAL file, from Barman's xlog.db."""
    xlog = engine.server_dir / "wals" / f"{engine.server}-xlog.db"
    out = []
    try:
        text = xlog.read_text()
    except (FileNotFoundError, PermissionError):
        return []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            try:
                out.append((parts[0], int(parts[1]), float(parts[2])))
            except ValueError:
                continue
    return out
