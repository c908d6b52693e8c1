"""Replaying the erasure ledger into a restored database: a forgotten memory never comes back
from a backup.

Which erasures a restored database lacks is exact, with no clock involved: a forget writes its
ledger rows in the transaction that deletes the memories, so the restored database's own
aegis_erasures holds precisely the erasures its backup (or its recovery point) already
contains. Every entry of the newest ledger (aegisctl.memory.ledger.current_ledger) that it
lacks is replayed: the row with that id goes, and so does any row of the same kind whose text
has the recorded SHA-256 (the same memory stored again under another id). The replayed entries
are then added to the restored ledger, and each memory table's id sequence is moved past the
highest erased id, so an erased id is not handed out again. A database restored from before the
ledger existed (no aegis_erasures) gets every entry replayed.

All of it is one transaction: a failure leaves the restored database as the backup had it, and
the restore reports the failure instead of success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.memory.ledger import Ledger, has_ledger_table, insert_entries
from aegisctl.memory.refs import KINDS, TABLES

if TYPE_CHECKING:
    import psycopg

    from aegisctl.output import Block


@dataclass
class ReplayResult:
    ledger_entries: int  # entries in the ledger used
    replayed: int  # entries the restored database lacked
    removed: dict[str, int] = field(default_factory=dict)  # kind -> rows deleted again
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_removed(self) -> int:
        return sum(self.removed.values())

    def line(self) -> str:
        if not self.ledger_entries:
            return "erasure ledger: empty, nothing to forget again"
        return (f"erasure ledger replayed: {self.rows_removed} forgotten row(s) removed again "
                f"({self.replayed} of {self.ledger_entries} ledger entries were newer than the "
                "backup)")

    def to_json(self) -> dict[str, Any]:
        return {"rows_removed": self.rows_removed, "removed": self.removed,
                "ledger_entries": self.ledger_entries, "entries_replayed": self.replayed,
                "sources": self.sources, "notes": self.notes}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        return [Note(self.line()), *(Note(n, style="yellow") for n in self.notes)]


REPLAY_DELETE = """
DELETE FROM {table}
WHERE id = ANY(%(ids)s)
   OR encode(sha256(convert_to({text}, 'UTF8')), 'hex') = ANY(%(digests)s)
RETURNING id
"""

ADVANCE_SEQUENCE = """
SELECT pg_catalog.setval(s.seq, greatest(
         coalesce(pg_catalog.pg_sequence_last_value(s.seq), 1), %(top)s))
FROM (SELECT pg_catalog.pg_get_serial_sequence(%(table)s, 'id')::regclass AS seq) s
WHERE s.seq IS NOT NULL
"""


def replay(conn: psycopg.Connection[Any], ledger: Ledger,
           notes: list[str] | None = None, restored_ledger: bool = True) -> ReplayResult:
    """Delete again, in `conn`'s database, what the ledger says was forgotten after its
    backup was taken; one transaction. `restored_ledger`: the database's aegis_erasures came
    from the same backup as the memories (a full restore); when it did not (a restore of some
    tables only), it says nothing about the backup and every entry is replayed."""
    from psycopg import sql

    result = ReplayResult(len(ledger.entries), 0, {k: 0 for k in KINDS}, list(ledger.sources),
                          list(notes or []))
    if not ledger.entries:
        return result
    with conn.transaction():
        has_table = has_ledger_table(conn)
        known: set[tuple[str, str, int]] = set()
        if has_table and restored_ledger:
            known = {(str(e), str(k), int(i)) for e, k, i in conn.execute(
                "SELECT erasure_id::text, kind, memory_id FROM aegis_erasures").fetchall()}
        pending = [e for e in ledger.entries if e.key not in known]
        result.replayed = len(pending)
        for kind in KINDS:
            entries = [e for e in pending if e.kind == kind]
            info = TABLES[kind]
            present = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                   (info.table,)).fetchone()
            if not entries or not present or not present[0]:
                continue
            ids = sorted({e.memory_id for e in entries})
            digests = sorted({e.content_sha256 for e in entries})
            rows = conn.execute(sql.SQL(REPLAY_DELETE).format(
                table=sql.Identifier(info.table), text=sql.Identifier(info.text)),
                {"ids": ids, "digests": digests}).fetchall()
            result.removed[kind] = len(rows)
            dups = conn.execute("SELECT to_regclass('aegis_memory_duplicates') IS NOT NULL"
                                ).fetchone()
            if rows and dups and dups[0]:  # archived copies of the same text (migration 0007)
                conn.execute("DELETE FROM aegis_memory_duplicates WHERE kind = %s "
                             "AND kept_id = ANY(%s)", (kind, [int(r[0]) for r in rows]))
            conn.execute(ADVANCE_SEQUENCE, {"table": info.table, "top": max(ids)})
        if has_table:
            insert_entries(conn, pending)
    return result
