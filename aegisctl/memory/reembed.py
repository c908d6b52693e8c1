"""Backfill or recompute embeddings in batches, each committed on its own, resumably.

`missing=True` embeds rows whose embedding is NULL: rerunning after an interruption simply
finds fewer of them. A full re-embed (after a model change) walks each table in id order and
records its position after every batch in `aegis_metadata` (key `memory_reembed`, with the
model and dimension): the next run with the same model continues after the last committed
batch; `restart=True` starts over.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.memory.refs import TABLES, Kind

if TYPE_CHECKING:
    import psycopg

    from aegisctl.memory.providers import EmbeddingProvider
    from aegisctl.output import Block

CHECKPOINT_KEY = "memory_reembed"


@dataclass
class ReembedResult:
    missing_only: bool
    model: str
    updated: dict[str, int] = field(default_factory=dict)
    resumed_from: dict[str, int] = field(default_factory=dict)
    remaining: dict[str, int] = field(default_factory=dict)

    @property
    def total_updated(self) -> int:
        return sum(self.updated.values())

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "missing_only": self.missing_only,
                "updated": self.updated, "resumed_from": self.resumed_from,
                "remaining_without_embedding": self.remaining}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        resumed = (" (resumed after "
                   + ", ".join(f"{k}:{v}" for k, v in self.resumed_from.items()) + ")"
                   if self.resumed_from else "")
        return [Note(f"embedded {self.total_updated} memories with {self.model}{resumed}")]


@dataclass
class ReembedPlan:
    """What `reembed --dry-run` would do."""

    model: str
    missing_only: bool
    todo: int

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": True, "model": self.model, "missing_only": self.missing_only,
                "would_embed": self.todo}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        which = "memories without an embedding" if self.missing_only else "memories (all)"
        return [Note(f"would embed {self.todo} {which} with {self.model}; nothing was "
                     "changed")]


def count_todo(conn: psycopg.Connection[Any], kinds: list[Kind], missing: bool) -> int:
    from psycopg import sql

    total = 0
    for kind in kinds:
        condition = sql.SQL("embedding IS NULL" if missing else "TRUE")
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            sql.Identifier(TABLES[kind].table), condition)).fetchone()
        total += int(row[0]) if row else 0
    return total


def _checkpoint(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute("SELECT value FROM aegis_metadata WHERE key = %s",
                       (CHECKPOINT_KEY,)).fetchone()
    if row is None:
        return {}
    try:
        data = json.loads(row[0])
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _save_checkpoint(conn: psycopg.Connection[Any], data: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO aegis_metadata (key, value, updated_at) VALUES (%s, %s, now()) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        (CHECKPOINT_KEY, json.dumps(data)),
    )


def reembed(conn: psycopg.Connection[Any], provider: EmbeddingProvider, kinds: list[Kind], *,
            missing: bool = False, restart: bool = False,
            progress: Callable[[int], None] | None = None) -> ReembedResult:
    """`conn` must be in autocommit mode: each batch is its own transaction."""
    from psycopg import sql

    from aegisctl.memory import vectors as pgvec
    from aegisctl.memory.providers import embed_texts

    pgvec.register(conn)
    result = ReembedResult(missing_only=missing, model=provider.model)
    state: dict[str, Any] = {}
    if not missing:
        saved = _checkpoint(conn)
        same = (saved.get("model") == provider.model
                and saved.get("dimensions") == provider.dimensions)
        state = saved if same and not restart else {}
        state.update(model=provider.model, dimensions=provider.dimensions)
    for kind in kinds:
        info = TABLES[kind]
        table, text = sql.Identifier(info.table), sql.Identifier(info.text)
        last_id = int(state.get(kind, 0)) if not missing else 0
        if last_id:
            result.resumed_from[kind] = last_id
        result.updated[kind] = 0
        condition = sql.SQL("embedding IS NULL" if missing else "TRUE")
        select = sql.SQL("SELECT id, {text} FROM {table} WHERE id > %s AND {cond} "
                         "ORDER BY id LIMIT %s").format(text=text, table=table, cond=condition)
        update = sql.SQL("UPDATE {table} SET embedding = %s WHERE id = %s").format(
            table=table)
        while True:
            rows = conn.execute(select, (last_id, provider.batch_size)).fetchall()
            if not rows:
                break
            vectors = embed_texts(provider, [str(r[1]) for r in rows])
            values = [(pgvec.to_vector(v), int(r[0])) for r, v in zip(rows, vectors, strict=True)]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(update, values)
                last_id = int(rows[-1][0])
                if not missing:
                    state[kind] = last_id
                    _save_checkpoint(conn, state)
            result.updated[kind] += len(rows)
            if progress:
                progress(len(rows))
    if not missing:
        conn.execute("DELETE FROM aegis_metadata WHERE key = %s", (CHECKPOINT_KEY,))
    result.remaining = {k: count_todo(conn, [k], True) for k in kinds}
    return result
