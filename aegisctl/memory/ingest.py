"""Writing memories: import JSON lines in committed batches, add one.

An import first validates the whole file (nothing is written when a line is bad, unless
skip_bad). That pass is the only one to parse the JSON: it keeps each valid row, its vector as
float32 bytes, in a spool (memory up to SPOOL_MEMORY, then an anonymous temporary file: about
4 bytes a dimension a row, well under the JSON's size). Then a bounded three-stage pipeline:

  reader thread   reads the next chunk from the spool, drops texts already stored or repeated
                  in the file
  embedder thread asks the provider for the chunk's missing vectors
  writers         (the main thread and WRITERS - 1 more, each with its own connection) write
                  earlier chunks, each in its own short transaction

So requests to the provider overlap with writing, and no statement or transaction is ever open
across a provider call. Chunks may commit out of file order (ids then interleave). Each chunk
is COPYed into a temporary table and inserted with `ON CONFLICT (content_hash) DO NOTHING`
against the unique index of migration 0007: the database, not this process, guarantees that a
text is stored once, even when two imports of one file run at the same time. An import that
dies keeps every committed chunk; running the same command again skips what is stored
(without re-embedding it) and continues.

When the spool cannot be written (no room in the temporary folder), a file is read and parsed
a second time instead; a pipe cannot be, and that import stops before writing anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import pickle
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed, UsageError
from aegisctl.memory import pipeline
from aegisctl.memory.records import BadLine, iter_raw_lines, parse_line, parse_record
from aegisctl.memory.refs import JSON_COLUMNS, KINDS, TABLES, Kind

if TYPE_CHECKING:
    import psycopg

    from aegisctl.memory.providers import EmbeddingProvider
    from aegisctl.output import Block

log = logging.getLogger(__name__)

CHUNK_ROWS = 256  # about this many rows per committed write (and per existence lookup)
PIPELINE_DEPTH = 2  # chunks waiting between two stages
DEADLOCK_RETRIES = 3
WRITERS = 2  # connections writing batches in parallel (HNSW upkeep is the database's cost)
SHOWN_BAD_LINES = 5
SPOOL_MEMORY = 32 * 1024 * 1024  # validated rows kept in memory up to this, then on disk
SPOOL_BATCH = 256  # rows pickled together
# (stage, done, total): stage is "validating" (bytes) or "importing" (rows).
Progress = Callable[[str, int, int | None], None]


@dataclass
class ImportResult:
    lines: int = 0
    valid: int = 0
    inserted: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    duplicates: int = 0
    embedded: int = 0
    without_embedding: int = 0
    batches: int = 0
    seconds: float = 0.0
    bad_lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_inserted(self) -> int:
        return sum(self.inserted.values())

    def to_json(self) -> dict[str, Any]:
        return {"lines": self.lines, "inserted": dict(self.inserted),
                "duplicates": self.duplicates, "embedded": self.embedded,
                "without_embedding": self.without_embedding, "batches": self.batches,
                "seconds": round(self.seconds, 3), "bad_lines": list(self.bad_lines)}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        return [Note(
            f"imported {self.total_inserted} memories ({self.inserted['episodic']} episodic, "
            f"{self.inserted['semantic']} semantic) from {self.lines} lines in "
            f"{self.batches} committed batches; {self.duplicates} already stored or repeated "
            f"(skipped); {self.embedded} embedded")]

    def warnings(self) -> list[str]:
        """What a person should notice, whatever the output format (said on stderr)."""
        said = [f"line {b['line']}: {b['error']} (skipped)" for b in self.bad_lines]
        if self.without_embedding:
            said.append(
                f"{self.without_embedding} memories have no embedding (no provider): keyword "
                "search finds them; run `aegisctl memory reembed --missing` after configuring "
                "one")
        return said


def require_unique_hashes(conn: psycopg.Connection[Any]) -> None:
    """Writing relies on migration 0007's unique content-hash indexes (ON CONFLICT)."""
    row = conn.execute(
        "SELECT count(DISTINCT c.relname) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] "
        "WHERE c.oid IN (to_regclass('episodic_memory'), to_regclass('semantic_memory')) "
        "AND i.indisunique AND i.indnatts = 1 AND i.indpred IS NULL "
        "AND a.attname = 'content_hash'").fetchone()
    if not row or row[0] != len(KINDS):
        raise OperationFailed("the memory tables have no unique index on content_hash "
                              "(migration 0007), so duplicates cannot be refused",
                              hint="run aegisctl schema migrate")


def content_hash(text: str) -> str:
    """The tables' generated `content_hash` (md5 of the text), computed before inserting."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def embedding_text(kind: Kind, row: dict[str, Any]) -> str:
    """The text a memory's vector is computed from (the one place that decides it): the
    embedding recipe RECIPE_VERSION of aegisctl/memory/recipe.py."""
    from aegisctl.memory.recipe import embed_text

    return embed_text(kind, row)


# ---------------------------------------------------------------------------------------------
# Validation: the whole file, before anything is written


def _spool_file() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY,
                                         prefix="aegisctl-import-")


class _Spool:
    """The validated rows in file order, so the writing pass does not parse the JSON again.

    Pickled in batches (vectors as float32 bytes), into a SpooledTemporaryFile:
    in memory up to SPOOL_MEMORY, then an anonymous file (unlinked at creation, mode 0600) in
    the temporary folder ($TMPDIR) that only this process can read. Memory stays bounded
    whatever the file's size. When writing it fails (a full disk), `ok` turns false and the
    rows kept so far are dropped.
    """

    def __init__(self) -> None:
        self.file: IO[bytes] | None = _spool_file()
        self.pending: list[tuple[Kind, dict[str, Any]]] = []
        self.error: OSError | None = None
        self.rows = 0

    @property
    def ok(self) -> bool:
        return self.file is not None

    def add(self, kind: Kind, row: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.pending.append((kind, row))
        self.rows += 1
        if len(self.pending) >= SPOOL_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.file is None:
            return
        try:
            if self.pending:
                pickle.dump(self.pending, self.file, protocol=pickle.HIGHEST_PROTOCOL)
            self.pending = []
        except OSError as exc:
            self._fail(exc)

    def _fail(self, error: OSError) -> None:
        self.error = error
        self.pending = []
        self.close()

    def drop(self) -> None:
        """Keep nothing more (the import will not write anything)."""
        self.close()

    def finish(self) -> None:
        self._flush()
        if self.file is not None:
            try:
                self.file.flush()
                self.file.seek(0)
            except OSError as exc:
                self._fail(exc)

    def read(self) -> Iterator[tuple[Kind, dict[str, Any]]]:
        assert self.file is not None
        while True:
            try:
                batch = pickle.load(self.file)
            except EOFError:
                return
            yield from batch

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def validate(stream: IO[bytes], dim: int, max_line_bytes: int, skip_bad: bool,
             result: ImportResult, progress: Progress | None = None,
             spool: _Spool | None = None) -> set[int]:
    """Check every line; the numbers of the bad ones. Raises when any is bad (unless
    skip_bad) or when no line is good. The valid rows go to `spool` (until a bad line means
    nothing will be written)."""
    bad: set[int] = set()
    total = _size(stream)
    last = time.monotonic()
    for raw in iter_raw_lines(stream, max_line_bytes):
        result.lines = raw.number
        error = raw.error
        if raw.text is not None:
            if not raw.text.strip():
                continue
            try:
                kind, row = parse_line(raw.text, dim)
            except BadLine as exc:
                error = str(exc)
        if error is None:
            result.valid += 1
            if spool is not None:
                spool.add(kind, row)
        else:
            bad.add(raw.number)
            result.bad_lines.append({"line": raw.number, "error": error})
            if spool is not None and not skip_bad:
                spool.drop()
        if progress and time.monotonic() - last > 0.1:
            last = time.monotonic()
            progress("validating", raw.end, total)
    if bad and not skip_bad:
        shown = "; ".join(f"line {b['line']}: {b['error']}"
                          for b in result.bad_lines[:SHOWN_BAD_LINES])
        more = len(bad) - SHOWN_BAD_LINES
        raise OperationFailed(
            f"{len(bad)} bad line(s), nothing was imported: {shown}"
            + (f"; and {more} more" if more > 0 else ""),
            hint="fix the lines, or pass --skip-bad to import the others")
    if bad and not result.valid:
        raise OperationFailed(f"every line is bad ({len(bad)}), nothing was imported: "
                              f"line {result.bad_lines[0]['line']}: "
                              f"{result.bad_lines[0]['error']}")
    return bad


def _size(stream: IO[bytes]) -> int | None:
    try:
        if not stream.seekable():
            return None
        here = stream.tell()
        end = stream.seek(0, 2)
        stream.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class _Chunk:
    rows: list[tuple[Kind, dict[str, Any]]]  # to write
    duplicates: int
    embedded: int = 0


def import_stream(writers: Sequence[psycopg.Connection[Any]], lookup: psycopg.Connection[Any],
                  stream: IO[bytes], dim: int, provider: EmbeddingProvider | None, *,
                  max_line_bytes: int, skip_bad: bool = False,
                  progress: Progress | None = None) -> ImportResult:
    """Import JSON lines from a binary stream. Each of `writers` (autocommit connections)
    writes batches in parallel with the others (index upkeep, HNSW above all, is the
    database's cost); `lookup` (autocommit) answers which texts are already stored."""
    started = time.monotonic()
    require_unique_hashes(lookup)
    result = ImportResult()
    spool = _Spool()
    try:
        return _import(writers, lookup, stream, dim, provider, spool, result, started,
                       max_line_bytes=max_line_bytes, skip_bad=skip_bad, progress=progress)
    finally:
        spool.close()


def _import(writers: Sequence[psycopg.Connection[Any]], lookup: psycopg.Connection[Any],
            stream: IO[bytes], dim: int, provider: EmbeddingProvider | None, spool: _Spool,
            result: ImportResult, started: float, *, max_line_bytes: int, skip_bad: bool,
            progress: Progress | None) -> ImportResult:
    from aegisctl.memory import vectors

    origin = stream.tell() if _rereadable(stream) else None
    bad = validate(stream, dim, max_line_bytes, skip_bad, result, progress, spool)
    spool.finish()
    log.info("checked %d lines: %d to import, %d bad", result.lines, result.valid, len(bad))
    rows: Iterator[tuple[Kind, dict[str, Any]]]
    if spool.ok:
        rows = spool.read()
    elif origin is not None:
        log.warning("cannot keep the checked rows in a temporary file (%s): the file is read "
                    "a second time", spool.error)
        stream.seek(origin)
        rows = _reparse(stream, dim, max_line_bytes, bad)
    else:
        raise OperationFailed(f"cannot keep the checked rows of the piped input in a temporary "
                              f"file ({spool.error}); nothing was imported",
                              hint="make room in the temporary folder or point TMPDIR at "
                                   "another one, or import from a file")
    for conn in writers:
        vectors.register(conn)
    now_row = writers[0].execute("SELECT now()").fetchone()
    assert now_row is not None
    stop = threading.Event()
    parsed: queue.Queue[Any] = queue.Queue(PIPELINE_DEPTH)
    embedded: queue.Queue[Any] = queue.Queue(PIPELINE_DEPTH + len(writers))
    size = chunk_rows(provider.batch_size if provider else None)
    threads = [
        pipeline.stage("reader", lambda: _read_chunks(rows, lookup, size), parsed, stop),
        pipeline.stage("embedder", lambda: (_embed_chunk(c, provider)
                                            for c in pipeline.upstream(parsed, stop)),
                       embedded, stop),
    ]
    lock = threading.Lock()
    done = [0]
    errors: list[BaseException] = []

    def consume(conn: psycopg.Connection[Any]) -> None:
        writer = _Writer(conn, now_row[0])
        try:
            for chunk in pipeline.upstream(embedded, stop, shared=True):
                inserted = writer.write(chunk.rows)
                new = sum(inserted.values())
                log.info("%s: %d new, %d already stored, %d embedded",
                         "committed a batch" if chunk.rows else "nothing new in a batch", new,
                         len(chunk.rows) - new + chunk.duplicates, chunk.embedded)
                with lock:
                    _account(result, chunk, inserted, provider is None)
                    done[0] += len(chunk.rows) + chunk.duplicates
                    if progress:
                        progress("importing", done[0], result.valid)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    helpers = [threading.Thread(target=consume, args=(conn,), daemon=True,
                                name="aegisctl-import-writer") for conn in writers[1:]]
    for helper in helpers:
        helper.start()
    try:
        consume(writers[0])
        for helper in helpers:
            while helper.is_alive():
                helper.join(timeout=0.2)
    finally:
        stop.set()
        for thread in [*threads, *helpers]:
            thread.join(timeout=5)
    if errors:
        raise errors[0]
    _Writer(writers[0], now_row[0]).analyze(result)
    result.seconds = time.monotonic() - started
    return result


def _account(result: ImportResult, chunk: _Chunk, inserted: dict[Kind, int],
             no_provider: bool) -> None:
    for kind, count in inserted.items():
        result.inserted[kind] += count
        # Stored meanwhile by a concurrent import: skipped by the database.
        result.duplicates += sum(1 for k, _ in chunk.rows if k == kind) - count
    result.duplicates += chunk.duplicates
    result.embedded += chunk.embedded
    if no_provider:
        result.without_embedding += sum(1 for _, r in chunk.rows if r["embedding"] is None)
    result.batches += 1 if chunk.rows else 0


def chunk_rows(batch_size: int | None) -> int:
    """Rows per chunk: CHUNK_ROWS rounded up to whole provider requests."""
    if not batch_size:
        return CHUNK_ROWS
    return -(-CHUNK_ROWS // batch_size) * batch_size


def _rereadable(stream: IO[bytes]) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _reparse(stream: IO[bytes], dim: int, max_line_bytes: int, bad: set[int]
             ) -> Iterator[tuple[Kind, dict[str, Any]]]:
    """The valid rows, parsed again from the file (when they could not be spooled)."""
    for raw in iter_raw_lines(stream, max_line_bytes):
        if raw.number in bad or raw.text is None or not raw.text.strip():
            continue
        yield parse_line(raw.text, dim)


def _read_chunks(rows: Iterator[tuple[Kind, dict[str, Any]]],
                 lookup: psycopg.Connection[Any], size: int) -> Iterator[_Chunk]:
    seen: set[tuple[str, str]] = set()
    pending: list[tuple[Kind, dict[str, Any], str]] = []
    for kind, row in rows:
        pending.append((kind, row, content_hash(row[TABLES[kind].text])))
        if len(pending) >= size:
            yield _new_rows(lookup, pending, seen)
            pending = []
    if pending:
        yield _new_rows(lookup, pending, seen)


def _new_rows(lookup: psycopg.Connection[Any], pending: list[tuple[Kind, dict[str, Any], str]],
              seen: set[tuple[str, str]]) -> _Chunk:
    """The chunk's rows whose text is neither stored already nor earlier in the file."""
    from psycopg import sql

    stored: dict[Kind, set[str]] = {}
    for kind in KINDS:
        hashes = sorted({h for k, _, h in pending if k == kind})
        if hashes:
            query = sql.SQL("SELECT content_hash FROM {} WHERE content_hash = ANY(%s)").format(
                sql.Identifier(TABLES[kind].table))
            # Never prepared: the table grows during the import, and a generic plan made while
            # it was nearly empty (a seq scan comparing each row with every hash) would be kept
            # to the end, making each lookup slower than the last (59 ms a chunk at 20,000
            # rows). Planned each time, it is an index scan of the unique index.
            found = lookup.execute(query, (hashes,), prepare=False).fetchall()
            stored[kind] = {str(r[0]) for r in found}
    rows: list[tuple[Kind, dict[str, Any]]] = []
    duplicates = 0
    for kind, row, digest in pending:
        if digest in stored[kind] or (kind, digest) in seen:
            duplicates += 1
            continue
        seen.add((kind, digest))
        rows.append((kind, row))
    return _Chunk(rows, duplicates)


def _embed_chunk(chunk: _Chunk, provider: EmbeddingProvider | None) -> _Chunk:
    from aegisctl.memory.providers import embed_texts
    from aegisctl.memory.recipe import RECIPE_VERSION

    missing = [(k, r) for k, r in chunk.rows if r["embedding"] is None]
    if missing and provider is not None:
        got = embed_texts(provider, [embedding_text(k, r) for k, r in missing])
        for (_, row), vector in zip(missing, got, strict=True):
            row["embedding"] = vector
            row["embedding_recipe"] = RECIPE_VERSION
        chunk.embedded = len(missing)
    return chunk


class _Writer:
    """One short transaction per chunk: binary COPY into a temporary table, then an
    insert-or-skip into the memory table in file order (ids follow the file)."""

    def __init__(self, conn: psycopg.Connection[Any], now: dt.datetime) -> None:
        self.conn = conn
        self.now = now
        self.staged: set[Kind] = set()

    def _stage_table(self, kind: Kind) -> Any:
        from psycopg import sql

        from aegisctl.pooler import per_transaction

        name = sql.Identifier(f"aegis_import_{kind}")
        if kind not in self.staged:
            columns = [*TABLES[kind].columns, "embedding", "embedding_recipe"]
            # Through a transaction pooler the server connection is shared: leave nothing on it.
            on_commit = "DROP" if per_transaction(self.conn) else "DELETE ROWS"
            self.conn.execute(sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT " + on_commit + " AS "
                "SELECT 0::int AS aegis_line, {} FROM {} WITH NO DATA").format(
                name, sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier(TABLES[kind].table)))
            self.staged.add(kind)
        return name

    def write(self, rows: list[tuple[Kind, dict[str, Any]]]) -> dict[Kind, int]:
        """Retried when the server breaks a deadlock with another import writing the same
        texts in another order (the rows are at hand, nothing is embedded twice)."""
        from psycopg import errors

        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                inserted = self._write(rows)
                break
            except errors.DeadlockDetected:
                if attempt == DEADLOCK_RETRIES:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return inserted

    def _write(self, rows: list[tuple[Kind, dict[str, Any]]]) -> dict[Kind, int]:
        from psycopg import sql
        from psycopg.types.json import Jsonb

        from aegisctl.memory.vectors import to_vector

        inserted: dict[Kind, int] = {}
        if not rows:
            return inserted
        from aegisctl.pooler import per_transaction

        if per_transaction(self.conn):
            # Through a transaction pooler the next transaction may run on a server connection
            # without the temporary table: it is made (if missing) in every transaction.
            self.staged.clear()
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                names = {kind: self._stage_table(kind) for kind in {k for k, _ in rows}}
                for kind, stage in names.items():
                    info = TABLES[kind]
                    columns = [*info.columns, "embedding", "embedding_recipe"]
                    targets = sql.SQL(", ").join(map(sql.Identifier, columns))
                    with cur.copy(sql.SQL("COPY {} (aegis_line, {}) FROM STDIN (FORMAT BINARY)")
                                  .format(stage, targets)) as copy:
                        copy.set_types(["int4", *(_copy_type(c) for c in columns)])
                        for number, (row_kind, row) in enumerate(rows):
                            if row_kind != kind:
                                continue
                            _fill_defaults(kind, row, self.now)
                            copy.write_row([number, *(
                                None if row.get(c) is None
                                else Jsonb(row[c]) if c in JSON_COLUMNS
                                else to_vector(row[c]) if c == "embedding"
                                else row[c]
                                for c in columns)])
                    cur.execute(sql.SQL(
                        "INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} "
                        "ORDER BY aegis_line ON CONFLICT (content_hash) DO NOTHING").format(
                        table=sql.Identifier(info.table), cols=targets, stage=stage))
                    inserted[kind] = max(cur.rowcount, 0)
        except BaseException:
            self.staged.clear()  # a rolled-back transaction takes its CREATE TEMP TABLE along
            raise
        return inserted

    def analyze(self, result: ImportResult) -> None:
        """Fresh statistics: search chooses between the index and an exact scan from the
        planner's estimates, and keyword ranking reads the table size from them."""
        from psycopg import sql

        for kind in KINDS:
            if result.inserted[kind]:
                self.conn.execute(sql.SQL("ANALYZE {}").format(
                    sql.Identifier(TABLES[kind].table)))


COLUMN_TYPES = {
    "timestamp": "timestamptz", "created_at": "timestamptz", "updated_at": "timestamptz",
    "graphiti_synced_at": "timestamptz", "event_type": "text", "summary": "text",
    "details": "jsonb", "context": "jsonb", "metadata": "jsonb", "importance": "text",
    "tags": "text[]", "related_memories": "int4[]", "decision": "text", "concept": "text",
    "content": "text", "category": "text", "source": "text", "confidence": "float8",
    "embedding": "vector", "embedding_recipe": "int2",
}


def _copy_type(column: str) -> str:
    """Binary COPY type of a column (text for varchar and the importance enum: the same
    wire format)."""
    return COLUMN_TYPES[column]


def _fill_defaults(kind: Kind, row: dict[str, Any], now: dt.datetime) -> None:
    """The staged rows carry every column, so the tables' defaults are applied here."""
    if kind == "episodic":
        row["timestamp"] = row["timestamp"] or now
        row["importance"] = row["importance"] or "medium"
    else:
        row["confidence"] = 1.0 if row["confidence"] is None else row["confidence"]
        row["updated_at"] = row["updated_at"] or row["created_at"] or now
    row["created_at"] = row["created_at"] or now


# ---------------------------------------------------------------------------------------------
# One memory


@dataclass
class AddResult:
    id: str
    inserted: bool
    embedded: bool

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "inserted": self.inserted, "embedded": self.embedded}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        return [Note(f"{'stored' if self.inserted else 'already stored as'} {self.id}")]


def add_memory(conn: psycopg.Connection[Any], obj: dict[str, Any], dim: int,
               provider: EmbeddingProvider | None) -> AddResult:
    """Insert one memory (a text already stored is not stored twice). `conn` is in autocommit
    mode: the provider is asked before the one INSERT, outside any transaction."""
    from psycopg import sql
    from psycopg.types.json import Jsonb

    from aegisctl.memory import vectors
    from aegisctl.memory.providers import embed_texts
    from aegisctl.memory.recipe import RECIPE_VERSION

    text = obj.get(TABLES[obj["kind"]].text) if obj.get("kind") in KINDS else None
    if isinstance(text, str) and not text.strip():
        raise UsageError("the memory's text is empty: give the words to remember")
    try:
        kind, row = parse_record(obj, dim)
    except BadLine as exc:
        raise UsageError(str(exc)) from None
    require_unique_hashes(conn)
    info = TABLES[kind]
    table = sql.Identifier(info.table)
    find = sql.SQL("SELECT id FROM {} WHERE content_hash = %s").format(table)
    digest = content_hash(row[info.text])
    embeds = provider is not None or row["embedding"] is not None
    found = conn.execute(find, (digest,)).fetchone()
    if found is not None:
        return AddResult(f"{kind}:{found[0]}", False, embeds)
    if row["embedding"] is None and provider is not None:
        row["embedding"] = embed_texts(provider, [embedding_text(kind, row)])[0]
        row["embedding_recipe"] = RECIPE_VERSION
    vectors.register(conn)
    columns = [c for c in (*info.columns, "embedding", "embedding_recipe")
               if row.get(c) is not None]
    values = [Jsonb(row[c]) if c in JSON_COLUMNS
              else vectors.to_vector(row[c]) if c == "embedding" else row[c]
              for c in columns]
    inserted = conn.execute(sql.SQL(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (content_hash) DO NOTHING RETURNING id"
    ).format(table, sql.SQL(", ").join(map(sql.Identifier, columns)),
             sql.SQL(", ").join([sql.Placeholder()] * len(columns))), values).fetchone()
    if inserted is None:  # stored meanwhile by someone else
        found = conn.execute(find, (digest,)).fetchone()
        assert found is not None
        return AddResult(f"{kind}:{found[0]}", False, embeds)
    return AddResult(f"{kind}:{inserted[0]}", True, embeds)
