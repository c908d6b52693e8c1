"""Whose logical backups these are: the database system each one was dumped from.

A target's backups live in `<backup folder>/<target>/`, and every embedded database is the target
`embedded`: two embedded databases (two data directories) with the default backup folder write
their dumps into the same folder. Retention counted across both would delete one database's
backups to honour the other's policy, and `--latest` could pick the other database's dump.

So each manifest records the system identifier PostgreSQL gave the cluster at initdb (kept by
dumps' manifests, not by the dumps). When a folder holds backups of more than one system,
prune and `--latest` act only on the target's own; the others are listed, never touched. A
folder with one system's backups (the usual case, and a restore onto a fresh server, whose
identifier is new) behaves as before.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aegisctl.errors import ConnectionFailed, OperationFailed

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import LoadedConfig
    from aegisctl.targets import Target

SYSTEM_ID = re.compile(r"^[1-9][0-9]{0,19}$")
log = logging.getLogger(__name__)


def read_system_id(conn: psycopg.Connection[Any]) -> str | None:
    """The connected server's system identifier, or None when it cannot be read (the caller's
    transaction is left as it was: this runs outside any snapshot)."""
    import psycopg

    try:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except psycopg.Error:
        conn.rollback()
        return None
    value = str(row[0]) if row else ""
    return value if SYSTEM_ID.match(value) else None


def foreign_backups(loaded: LoadedConfig, target: Target,
                    owners: Mapping[str, str | None]) -> dict[str, str]:
    """Backup id -> why it is not the target's own, for a folder whose backups (id -> system
    identifier, None when an older manifest did not record it) come from several database
    systems; empty when they come from at most one. Unrecorded ones count as the target's."""
    known = {s for s in owners.values() if s}
    if len(known) < 2:
        return {}
    from aegisctl.backup.physical.identity import connected_system_id

    try:
        current = connected_system_id(loaded, target)
    except ConnectionFailed as exc:
        raise OperationFailed(
            f"the backup folder of target '{target.name}' holds backups of {len(known)} "
            f"database systems, and which one is this target's cannot be read ({exc.message})",
            hint="start the server so aegisctl can tell them apart, and give each database "
                 "its own backup.directory") from None
    return {backup_id: f"another database system's backup (system identifier {system}) "
                       "sharing this folder: prune it with that database's configuration, "
                       "and give each database its own backup.directory"
            for backup_id, system in owners.items() if system and system != current}


def warn_if_shared(owners: Mapping[str, str | None], own: str | None, folder: object) -> None:
    """After a backup: say once that the folder is shared with another database system."""
    others = sorted({s for s in owners.values() if s and own and s != own})
    if others:
        log.warning("the backup folder %s also holds backups of another database system "
                    "(system identifier %s); give each database its own backup.directory",
                    folder, ", ".join(others))
