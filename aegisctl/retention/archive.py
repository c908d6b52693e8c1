"""Archives of deleted rows: gzip-compressed JSON lines, one row (to_jsonb of the row) a line.

Each batch is appended as its own gzip member, fsynced and read back (it decompresses and
holds the batch's row count) *before* the batch's transaction commits, so every deleted row is
in the archive; if the commit fails, the member is cut off again (truncate + fsync), so no row
that stayed in the table is in the archive. A write that fails (a full disk: `os.write` then
writes only part of the member, or nothing) cuts the member off too and raises
`ArchiveWriteFailed`, which rolls the batch back and stops the whole run: nothing is deleted
that is not archived. Before its final name, the whole file is read back once more.

The file is written under a ".tmp-" name and renamed into place when the policy finishes (or
stops after an interrupt). A run killed hard (SIGKILL, power loss) can leave a ".tmp-" file
whose last batch may not have been committed; the next run renames such leftovers to
"*.incomplete.jsonl.gz", so nothing is lost and nothing pretends to be complete. Archives go
to <archive_dir>/<policy>/, and to the backup remote (<prefix><target>/cleanup-archive/
<policy>/<file>) when one is configured.

A whole partition that is dropped gets its own archive, <partition>-<run>.partition.jsonl.gz,
named after the run that detached it and completed (renamed) before the DROP. A run killed in
between leaves either a finished file, which the next run finds and does not write again, or a
".tmp-" one, which it discards and writes again in full: the partition, detached but not
dropped, still holds every row. Either way each row is archived exactly once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import os
import re
import shutil
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aegisctl.backup.store import TMP_PREFIX, fsync_dir
from aegisctl.errors import OperationFailed

if TYPE_CHECKING:
    from aegisctl.config import Settings

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ArchiveWriteFailed(OperationFailed):
    """An archive could not be written or did not read back: the batch was not deleted and
    the run stops (the next policy would write to the same folder)."""


def archive_failure(folder: Path, reason: str, what: str) -> ArchiveWriteFailed:
    """One line naming the folder and its free space, so a full disk is plain to see."""
    from aegisctl.units import format_bytes

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{format_bytes(shutil.disk_usage(probe).free)} free"
    except OSError:
        free = "free space unknown"
    return ArchiveWriteFailed(f"cannot write the cleanup archive in {folder} ({free}): {reason}; "
                              f"{what}")


def _write_all(fd: int, data: bytes) -> None:
    """`os.write` may write only part of the data (a filesystem filling up): loop until all
    of it is written, so that the error of the write that cannot proceed is raised."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(28, os.strerror(28))
        view = view[written:]


def _drop_cache(fd: int) -> None:
    """After an fsync the pages are clean: dropping them makes the read-back read the disk."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def count_rows(path: Path, start: int = 0) -> int:
    """The lines in the gzip members from byte `start` on; raises ValueError when they do not
    decompress to the end (a cut or corrupted member)."""
    try:
        with open(path, "rb") as raw:
            _drop_cache(raw.fileno())
            raw.seek(start)
            lines = 0
            with gzip.GzipFile(fileobj=raw, mode="rb") as members:
                while block := members.read(1024 * 1024):
                    lines += block.count(b"\n")
            return lines
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"it does not decompress ({exc})") from None


def safe_part(name: str) -> str:
    """A path component from a config name or an identifier: never a separator or '..'."""
    cleaned = _SAFE.sub("_", name).lstrip(".")
    return cleaned or "_"


class ArchiveWriter:
    def __init__(self, root: Path, policy: str, table: str, run_id: str) -> None:
        self.folder = root / safe_part(policy)
        self.final = self.folder / f"{safe_part(table)}-{run_id}.jsonl.gz"
        n = 1
        while self.final.exists():  # two runs within one second: never overwrite an archive
            self.final = self.folder / f"{safe_part(table)}-{run_id}-{n}.jsonl.gz"
            n += 1
        self.tmp = self.folder / f"{TMP_PREFIX}{self.final.name}"
        self.rows = 0

    def recover_leftovers(self) -> list[Path]:
        """Rename temporaries of killed runs (call under the job lock). A partition archive's
        temporary is left to `PartitionArchive`, which writes it again in full."""
        renamed = []
        if self.folder.is_dir():
            for path in self.folder.glob(f"{TMP_PREFIX}*.jsonl.gz"):
                if path.name.endswith(PARTITION_SUFFIX):
                    continue
                target = path.with_name(path.name[len(TMP_PREFIX):].replace(
                    ".jsonl.gz", ".incomplete.jsonl.gz"))
                os.replace(path, target)
                renamed.append(target)
        return renamed

    def mark(self) -> int:
        """The archive's length now: `rollback(mark)` forgets what was written after it."""
        try:
            return self.tmp.stat().st_size
        except FileNotFoundError:
            return 0

    def rollback(self, mark: int, rows: int) -> None:
        """The batch's transaction did not commit: its rows must not stay in the archive."""
        self._cut(mark)
        self.rows -= rows

    def _cut(self, mark: int) -> None:
        if self.tmp.exists():
            fd = os.open(self.tmp, os.O_WRONLY)
            try:
                os.ftruncate(fd, mark)
                os.fsync(fd)
            finally:
                os.close(fd)

    def write(self, lines: list[str]) -> None:
        """Append one batch and prove it is on disk (fsynced, decompresses, holds every row)
        before the caller commits the batch's DELETE; on any failure the member is cut off
        again and `ArchiveWriteFailed` says why."""
        if not lines:
            return
        data = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6)
        mark = self.mark()
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            created = not self.tmp.exists()
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.folder)
            found = count_rows(self.tmp, mark)
            if found != len(lines):
                raise ValueError(f"it holds {found} of the batch's {len(lines)} rows")
        except (OSError, ValueError) as exc:
            reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else \
                f"the batch did not read back: {exc}"
            with contextlib.suppress(OSError):  # else the next run keeps it as incomplete
                self._cut(mark)
            raise archive_failure(self.folder, reason,
                                  "stopped before deleting this batch (every deleted row is "
                                  "archived)") from None
        self.rows += len(lines)

    def close(self) -> Path | None:
        """Read the whole archive back and give it its final name; an archive that does not
        read back keeps its temporary name (the next run keeps it as incomplete)."""
        if not self.tmp.exists():
            return None
        if self.rows == 0:  # every batch was cut off again: nothing to keep
            self.tmp.unlink(missing_ok=True)
            return None
        try:
            found = count_rows(self.tmp)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise archive_failure(self.folder, f"{self.tmp.name} did not read back: {reason}",
                                  "it keeps its temporary name") from None
        if found != self.rows:
            raise archive_failure(self.folder, f"{self.tmp.name} holds {found} rows, not the "
                                  f"{self.rows} deleted", "it keeps its temporary name")
        os.replace(self.tmp, self.final)
        fsync_dir(self.folder)
        return self.final


PARTITION_SUFFIX = ".partition.jsonl.gz"


class PartitionArchive:
    """The archive of one whole partition, written before it is dropped (see the module's
    docstring): its name depends only on the partition and the run that detached it."""

    def __init__(self, root: Path, policy: str, partition: str, token: str) -> None:
        self.folder = root / safe_part(policy)
        self.final = self.folder / f"{safe_part(partition)}-{safe_part(token)}{PARTITION_SUFFIX}"
        self.tmp = self.folder / f"{TMP_PREFIX}{self.final.name}"

    @property
    def complete(self) -> bool:
        """Written in full by an earlier (interrupted) run: do not write it again."""
        return self.final.is_file()

    def write_all(self, chunks: Iterable[list[str]]) -> int:
        """Write every row (a half-written temporary of a killed run is discarded first),
        then rename into place; the number of rows."""
        rows = 0
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.tmp.unlink(missing_ok=True)
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=False) as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as out:
                    for lines in chunks:
                        if lines:
                            out.write(("\n".join(lines) + "\n").encode())
                            rows += len(lines)
                os.fsync(fd)
            finally:
                os.close(fd)
            found = count_rows(self.tmp)
            if found != rows:
                raise ValueError(f"it holds {found} of the partition's {rows} rows")
            os.replace(self.tmp, self.final)
            fsync_dir(self.folder)
        except (OSError, ValueError) as exc:
            reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else \
                f"the archive did not read back: {exc}"
            self.tmp.unlink(missing_ok=True)  # written again in full by the next run
            raise archive_failure(self.folder, reason,
                                  "the partition was not dropped") from None
        return rows


def run_id(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


UPLOADED_SUFFIX = ".uploaded"


def pending_archives(settings: Settings, target: str) -> list[Path]:
    """Every local archive of the target not yet uploaded (a killed run's temporary too: the
    next run keeps it as incomplete and uploads it), oldest first."""
    from aegisctl.paths import archive_root

    root = archive_root(settings, target)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("*/*.jsonl.gz")
             if p.is_file() and not p.with_name(p.name + UPLOADED_SUFFIX).exists()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


@dataclass
class ArchiveUploads:
    uploaded: dict[str, str] = field(default_factory=dict)  # local path -> key
    error: str | None = None


def upload_pending_archives(settings: Settings, target: str) -> ArchiveUploads:
    """Upload every finished archive not yet uploaded (this run's, and those of interrupted or
    failed runs), marking each with a `<file>.uploaded` file beside it; stops at the first
    failure (the store is likely unreachable), which the next run retries."""
    from aegisctl.backup.store import write_atomic
    from aegisctl.errors import AegisError

    result = ArchiveUploads()
    for path in pending_archives(settings, target):
        if path.name.startswith(TMP_PREFIX):
            continue  # a killed run's, still being written for all we know: the next run's
        try:
            key = upload_archive(settings, target, path, path.parent.name)
        except AegisError as exc:
            result.error = f"uploading cleanup archive {path.name}: {exc}"
            break
        write_atomic(path.with_name(path.name + UPLOADED_SUFFIX),
                     f"{key}\n".encode())
        result.uploaded[str(path)] = key
    return result


def upload_archive(settings: Settings, target: str, path: Path, policy: str) -> str:
    """Upload one archive to the backup remote with the backup uploads' checks; its key."""
    from aegisctl.backup.manifest import BackupFile
    from aegisctl.backup.remote import _upload_file, file_digests, open_remote, remote_errors

    remote = open_remote(settings.backup.remote, target)
    key = f"{remote.prefix()}cleanup-archive/{safe_part(policy)}/{path.name}"
    digests = file_digests(path, remote.settings)
    item = BackupFile(path=path.name, size=digests.size, sha256=digests.sha256)
    with remote_errors(f"uploading archive {path.name}"):
        _upload_file(remote, path, key, item, digests, None)
    return key
