"""`memory forget`: delete memories chosen like a search, record each one in the erasure ledger,
and copy the ledger beside the backups and to the remote so every later restore deletes them
again (aegisctl.memory.replay).

The selection is made first and shown (a dry run stops there): memory ids, the filters of
search/recent/export, or the hits of a search (`--query` with `--min-score`, so that "the ten
nearest" never means "ten memories that happen to be nearest"). The deletes then run in batches
as cleanup's do (each its own short transaction, with cleanup's timeouts, adaptive size,
standby-lag throttling and, on a cluster, the leader re-checked after each batch). Each batch
deletes its rows and writes their ledger rows in the same transaction, so the table and the
ledger can never disagree, and an interrupted run leaves only whole, recorded batches.
"""

from __future__ import annotations

import contextlib
import getpass
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.errors import UsageError
from aegisctl.memory.filters import Filters
from aegisctl.memory.refs import KINDS, TABLES, Kind, MemoryRef
from aegisctl.testhooks import pause_at

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import Settings
    from aegisctl.memory.ledger import PublishResult
    from aegisctl.memory.providers import EmbeddingProvider
    from aegisctl.output import Block

PREVIEW = 100  # rows a table shows; JSON lists every id


@dataclass
class Selection:
    filters: Filters = field(default_factory=Filters)  # memory ids go in filters.ids
    query: str | None = None
    min_score: float | None = None
    limit: int = 1000  # hits of --query at most
    everything: bool = False  # --all: every memory of the chosen kind(s), asked for by name

    def check(self) -> None:
        if self.query is not None and self.min_score is None:
            raise UsageError("--query needs --min-score: forget only what is relevant enough",
                             hint="try the search first: aegisctl memory search QUERY "
                                  "--min-score 0.6")
        if self.min_score is not None and self.query is None:
            raise UsageError("--min-score goes with --query")
        if self.query is not None and self.filters.ids:
            raise UsageError("give memory ids or --query, not both")
        narrowed = self.query is not None or self.filters.active
        if self.everything and narrowed:
            raise UsageError("--all forgets every memory of --kind: give it without ids, "
                             "filters or --query")
        # A kind alone narrows nothing (`--kind episodic` is every episodic memory): emptying
        # a table is said in so many words, as cleanup's --allow-emptying.
        if not narrowed and not self.everything:
            raise UsageError("memory forget needs ids, filters or --query: it never forgets "
                             "every memory by default",
                             hint="e.g. aegisctl memory forget --context agent=planner "
                                  "--dry-run; to forget every memory of --kind, add --all")


@dataclass
class Chosen:
    kind: Kind
    id: int
    at: str | None
    text: str


@dataclass
class ForgetResult:
    dry_run: bool
    target: str
    chosen: list[Chosen]
    reason: str | None = None
    erasure_id: str | None = None
    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    not_found: list[str] = field(default_factory=list)
    published: PublishResult | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {k: sum(1 for c in self.chosen if c.kind == k) for k in KINDS}

    def statement(self) -> str:
        counts = self.counts
        return (f"{len(self.chosen)} memories ({counts['episodic']} episodic, "
                f"{counts['semantic']} semantic) of target '{self.target}'")

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "target": self.target, "selected": self.counts,
                "ids": [f"{c.kind}:{c.id}" for c in self.chosen], "not_found": self.not_found,
                "reason": self.reason, "erasure_id": self.erasure_id, "deleted": self.deleted,
                "batches": self.batches,
                "ledger": self.published.to_json() if self.published else None}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note, Table

        blocks: list[Block] = []
        if self.dry_run:
            rows: list[Any] = [(f"{c.kind}:{c.id}", (c.at or "-")[:19], c.text[:80])
                    for c in self.chosen[:PREVIEW]]
            blocks.append(Table(["id", "time", "text"], rows,
                                title=f"would forget {self.statement()}"))
            if len(self.chosen) > PREVIEW:
                blocks.append(Note(f"... and {len(self.chosen) - PREVIEW} more (--format json "
                                   "lists every id)"))
        for ref in self.not_found:
            blocks.append(Note(f"no memory {ref}", style="yellow"))
        if self.dry_run:
            blocks.append(Note("dry run: nothing was deleted"))
            return blocks
        total = sum(self.deleted.values())
        blocks.append(Note(f"forgot {total} memories ({self.deleted.get('episodic', 0)} "
                           f"episodic, {self.deleted.get('semantic', 0)} semantic) in "
                           f"{self.batches} batch(es); erasure {self.erasure_id} recorded in the "
                           "ledger"))
        if self.published:
            where = [w for w in (self.published.local, self.published.remote) if w]
            if where:
                blocks.append(Note(f"ledger ({self.published.entries} entries) copied to "
                                   + " and ".join(where)))
        return blocks


def _row(kind: Kind, row: tuple[Any, ...]) -> Chosen:
    at = row[1].isoformat() if row[1] is not None else None
    return Chosen(kind, int(row[0]), at, str(row[2] or ""))


def select(conn: psycopg.Connection[Any], settings: Settings, selection: Selection,
           provider: EmbeddingProvider | None, dim: int) -> tuple[list[Chosen], list[str]]:
    """(the memories chosen, ids given that do not exist or do not match the filters)."""
    import dataclasses

    from psycopg import sql

    selection.check()
    filters = selection.filters
    if selection.query is not None:
        from aegisctl.memory.search import SearchRequest, search

        request = SearchRequest(query=selection.query, filters=filters,
                                limit=selection.limit, min_score=selection.min_score,
                                dedupe=False, highlight=False, rerank=False)
        hits = search(conn, settings, request, provider, dim).hits
        if not hits:
            return [], []
        filters = dataclasses.replace(filters, ids=[MemoryRef(h.kind, h.id) for h in hits])
    chosen: list[Chosen] = []
    for kind in filters.kinds():
        info = TABLES[kind]
        where, params = filters.where(kind)
        query = sql.SQL("SELECT id, {time}, {text} FROM {table} WHERE {where} ORDER BY id"
                        ).format(time=sql.Identifier(info.time), text=sql.Identifier(info.text),
                                 table=sql.Identifier(info.table), where=where)
        chosen += [_row(kind, r) for r in conn.execute(query, params).fetchall()]
    found = {(c.kind, c.id) for c in chosen}
    missing = [str(r) for r in selection.filters.ids if (r.kind, r.id) not in found]
    return chosen, missing


FORGET_BATCH = """
WITH gone AS (
  DELETE FROM {table} WHERE id = ANY(%(ids)s)
  RETURNING id, encode(sha256(convert_to({text}, 'UTF8')), 'hex') AS digest
), dup AS (
  DELETE FROM aegis_memory_duplicates WHERE kind = %(kind)s AND kept_id IN (SELECT id FROM gone)
)
INSERT INTO aegis_erasures (erasure_id, kind, memory_id, content_sha256, reason, os_user, batch)
SELECT %(erasure)s, %(kind)s, id, digest, %(reason)s, %(os_user)s, %(batch)s FROM gone
RETURNING memory_id
"""


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        import os

        return f"uid {os.getuid()}"


def forget(conn: psycopg.Connection[Any], settings: Settings, target: str,
           chosen: list[Chosen], reason: str) -> ForgetResult:
    """Delete the chosen memories in batches, each with its ledger rows; then copy the ledger
    beside the backups and to the remote. The caller holds the target's lock."""
    import psycopg
    from psycopg import sql

    from aegisctl.maintenance.runner import ensure_primary
    from aegisctl.memory.ledger import has_ledger_table, publish, read_db_ledger
    from aegisctl.retention.batches import BatchStats, Pacer, _batch_session, _end_batch_session

    if not has_ledger_table(conn):
        from aegisctl.errors import OperationFailed

        raise OperationFailed("this database has no erasure ledger (aegis_erasures): nothing "
                              "was deleted", hint="run aegisctl schema migrate first")
    ensure_primary(conn, "memory forget")
    result = ForgetResult(False, target, chosen, reason, str(uuid.uuid4()),
                          {k: 0 for k in KINDS})
    user = os_user()
    stats = BatchStats()
    pacer = Pacer(settings.cleanup, conn, should_stop=lambda: False)
    _batch_session(conn, settings.cleanup, durable=True)
    try:
        for kind in KINDS:
            ids = [c.id for c in chosen if c.kind == kind]
            info = TABLES[kind]
            statement = sql.SQL(FORGET_BATCH).format(table=sql.Identifier(info.table),
                                                     text=sql.Identifier(info.text))
            while ids:
                batch, ids = ids[:pacer.size], ids[pacer.size:]
                started = time.monotonic()
                with conn.transaction():
                    rows = conn.execute(statement, {
                        "ids": batch, "kind": kind, "erasure": result.erasure_id,
                        "reason": reason, "os_user": user, "batch": result.batches}).fetchall()
                    pause_at("forget.batch-deleted")
                pause_at("forget.batch-committed")
                result.deleted[kind] += len(rows)
                result.batches += 1
                pacer.after_batch(time.monotonic() - started, stats)
    finally:
        # Also when a later batch failed or the run was interrupted: what was committed is
        # forgotten and must reach the copies beside the backups (a connection that is gone
        # leaves that to the next forget or backup, which copy the database's ledger).
        if not conn.closed and conn.info.transaction_status == 0:
            with contextlib.suppress(psycopg.Error):
                _end_batch_session(conn)
                if result.batches:
                    ledger = read_db_ledger(conn)
                    assert ledger is not None
                    result.published = publish(settings.backup, target, ledger)
    return result
