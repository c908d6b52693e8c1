"""Backfill or recompute embeddings in batches, each committed on its own, resumably.

`missing=True` embeds rows whose embedding is NULL, and `stale=True` those too plus rows
embedded with an older recipe (aegisctl.memory.recipe; `embedding_recipe` below RECIPE_VERSION):
rerunning after an interruption simply finds fewer of them. Every row re-embedded gets the
current recipe's text and records its version. A full re-embed (after a model change) walks
each table in id order and
records its position after every batch in `aegis_metadata` (key `memory_reembed`, with the
model and dimension): the next run with the same model continues after the last committed
batch; `restart=True` starts over.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.memory.recipe import RECIPE_VERSION, recipe_columns
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
    stale: bool = False

    @property
    def total_updated(self) -> int:
        return sum(self.updated.values())

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "missing_only": self.missing_only, "stale": self.stale,
                "recipe": RECIPE_VERSION, "updated": self.updated, "resumed_from": self.resumed_from,
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
    stale: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": True, "model": self.model, "missing_only": self.missing_only,
                "stale": self.stale, "recipe": RECIPE_VERSION, "would_embed": self.todo}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        which = ("memories without an embedding or on an older recipe" if self.stale
                 else "memories without an embedding" if self.missing_only
                 else "memories (all)")
        return [Note(f"would embed {self.todo} {which} with {self.model}; nothing was "
                     "changed")]


def _condition(missing: bool, stale: bool) -> Any:
    from psycopg import sql

    if stale:
        return sql.SQL("(embedding IS NULL OR embedding_recipe < {})").format(
            sql.Literal(RECIPE_VERSION))
    return sql.SQL("embedding IS NULL" if missing else "TRUE")


def count_todo(conn: psycopg.Connection[Any], kinds: list[Kind], missing: bool,
               stale: bool = False) -> int:
    from psycopg import sql

    total = 0
    for kind in kinds:
        condition = _condition(missing, stale)
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
            missing: bool = False, stale: bool = False, restart: bool = False,
            progress: Callable[[int], None] | None = None) -> ReembedResult:
    """`conn` must be in autocommit mode: each batch is its own transaction."""
    from psycopg import sql

    from aegisctl.memory import vectors as pgvec
    from aegisctl.memory.ingest import embedding_text
    from aegisctl.memory.providers import embed_texts

    pgvec.register(conn)
    missing = missing or stale  # both walk only the rows still to do; no checkpoint needed
    result = ReembedResult(missing_only=missing, model=provider.model, stale=stale)
    state: dict[str, Any] = {}
    if not missing:
        saved = _checkpoint(conn)
        same = (saved.get("model") == provider.model
                and saved.get("dimensions") == provider.dimensions)
        state = saved if same and not restart else {}
        state.update(model=provider.model, dimensions=provider.dimensions)
    for kind in kinds:
        info = TABLES[kind]
        table = sql.Identifier(info.table)
        columns = sql.SQL(", ").join(map(sql.Identifier, recipe_columns(kind)))
        last_id = int(state.get(kind, 0)) if not missing else 0
        if last_id:
            result.resumed_from[kind] = last_id
        result.updated[kind] = 0
        condition = _condition(missing, stale)
        select = sql.SQL("SELECT id, {columns} FROM {table} WHERE id > %s AND {cond} "
                         "ORDER BY id LIMIT %s").format(columns=columns, table=table,
                                                        cond=condition)
        update = sql.SQL("UPDATE {table} SET embedding = %s, embedding_recipe = {recipe} "
                         "WHERE id = %s").format(table=table,
                                                 recipe=sql.Literal(RECIPE_VERSION))
        while True:
            rows = conn.execute(select, (last_id, provider.batch_size)).fetchall()
            if not rows:
                break
            names = recipe_columns(kind)
            vectors = embed_texts(provider, [embedding_text(kind, dict(zip(names, r[1:],
                                                                            strict=True)))
                                             for r in rows])
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
    result.remaining = {k: count_todo(conn, [k], True, stale) for k in kinds}
    return result
