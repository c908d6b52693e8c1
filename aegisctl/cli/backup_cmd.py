"""aegisctl backup: create, list, verify, restore, prune, upload, download, keep, unkeep."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aegisctl import output
from aegisctl.cli import physical_cmd
from aegisctl.cli.context import AppState, FormatOption, OutputFormat, state
from aegisctl.errors import ExitCode

if TYPE_CHECKING:
    from aegisctl.backup.manifest import BackupManifest
    from aegisctl.backup.service import PruneResult

app = typer.Typer(
    help=(
        "Backups you can trust: pg_dump with a manifest beside each backup, verification "
        "(up to a full restore test), restore, retention that never deletes the last good "
        "backup, and S3-compatible remote copies.\n\n"
        "Example: aegisctl backup create --label nightly"
    ),
    no_args_is_help=True,
    add_completion=False,
)

WaitLock = Annotated[float, typer.Option(
    "--wait-lock", metavar="SECONDS", min=0,
    help="Wait this long for another backup, prune or restore of the target, then exit 4.")]


class DumpFormat(StrEnum):
    custom = "custom"
    directory = "directory"


class VerifyLevel(StrEnum):
    none = "none"
    quick = "quick"
    restore_test = "restore-test"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit}"
    return f"{seconds}s"


@contextlib.contextmanager
def _progress(app_state: AppState) -> Iterator[Any]:
    """A one-line status on a terminal; nothing at all under a timer or with --quiet."""
    if app_state.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("starting") as status:
        def update(stage: str, done: int) -> None:
            status.update(f"{stage}: {_human(done)}")

        yield update


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        output.print_status("not a terminal: pass --yes to confirm")
        raise typer.Exit(int(ExitCode.USAGE))
    if not typer.confirm(question, default=False, err=True):
        output.print_status("cancelled; nothing was changed")
        raise typer.Exit(int(ExitCode.FAILED))


def _pick(app_state: AppState, backup_id: str | None, latest: bool) -> BackupManifest:
    from aegisctl.backup.store import BackupStore
    from aegisctl.errors import UsageError

    store = BackupStore(app_state.config().settings.backup, app_state.target().name)
    if bool(backup_id) == latest:
        raise UsageError("give a backup ID or --latest (one of the two)")
    return store.latest() if latest else store.load(str(backup_id))


@app.command()
def create(
    ctx: typer.Context,
    label: Annotated[str | None, typer.Option("--label", help="A note kept in the manifest "
                                              "(e.g. before-upgrade).")] = None,
    dump_format: Annotated[DumpFormat | None, typer.Option(
        "--dump-format", help="custom (one file) or directory (parallel with --jobs); "
        "default backup.format.")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="Parallel pg_dump "
                                             "jobs (directory format).")] = None,
    compress: Annotated[int | None, typer.Option("--compress", min=0, max=9, help="gzip level "
                                                 "0-9 (default backup.compress, 1).")] = None,
    globals_: Annotated[bool, typer.Option("--globals", help="Also save roles with "
                                           "pg_dumpall --globals-only.")] = False,
    verify: Annotated[VerifyLevel | None, typer.Option(
        "--verify", help="After the dump: none, quick (checksum + pg_restore --list) or "
        "restore-test (default backup.verify_after_create, quick).")] = None,
    no_upload: Annotated[bool, typer.Option("--no-upload", help="Do not upload now; the "
                                            "backup stays pending.")] = False,
    wait_lock: WaitLock = 0.0,
    physical: Annotated[bool, typer.Option("--physical", help="A physical backup through "
                                           "Barman instead (backup physical enable).")] = False,
    incremental: Annotated[bool, typer.Option("--incremental", help="With --physical: only "
                                              "what changed since --parent.")] = False,
    parent: Annotated[str | None, typer.Option("--parent", metavar="ID", help="Parent of an "
                                               "incremental (default: the newest).")] = None,
    fmt: FormatOption = None,
) -> None:
    """Dump the target with pg_dump into the backup folder, write its manifest, verify it,
    and upload it (and any pending one) when a remote is configured. Exits 1 when the
    verification or the upload fails (the local backup is kept, marked pending).

    Examples:

      aegisctl backup create --label nightly

      aegisctl backup create --dump-format directory --jobs 2 --globals --format json

      aegisctl backup create --physical --incremental
    """
    if physical or incremental:
        return physical_cmd.create_physical(ctx, incremental=incremental, parent=parent, fmt=fmt)
    from aegisctl.backup.dump import CreateOptions
    from aegisctl.backup.service import run_create

    app_state = state(ctx)
    options = CreateOptions(label=label, format=dump_format.value if dump_format else None,
                            jobs=jobs, compress=compress, globals=globals_)
    with _progress(app_state) as progress:
        result = run_create(app_state.config(), app_state.target(), options,
                            wait_lock=wait_lock, verify=verify.value if verify else None,
                            upload=not no_upload, progress=progress)
    m = result.manifest
    failed_verify = result.verification is not None and not result.verification.ok
    if app_state.fmt(fmt) is OutputFormat.json:
        output.emit_json({**m.to_dict(), "uploaded_now": result.uploaded,
                          "upload_error": result.upload_error})
    else:
        output.print_fields([
            ("id", m.id), ("label", m.label or "-"), ("target", f"{m.target} ({m.database})"),
            ("format", f"{m.format}, compress {m.compress}, jobs {m.jobs}"),
            ("size", _human(m.size)), ("sha256", m.sha256),
            ("pg_dump", f"{m.pg_dump_version} ({m.pg_dump_source}: {m.pg_dump_path})"),
            ("server", m.server_version), ("duration", f"{m.duration_seconds:.1f} s"),
            ("tables", f"{len(m.tables)} ({sum(t.rows for t in m.tables)} rows)"),
            ("encrypted", f"yes (key id {m.encryption['key_id']})" if m.encryption else "no"),
            ("verified", f"{m.verified} ({m.verification.level})" if m.verification
             else "unverified"),
            ("remote", m.remote.status), ("path", str(Path(m.files[0].path))),
        ], title="backup created")
    if failed_verify and result.verification:
        for problem in result.verification.verification.problems:
            output.print_status(f"verify: {problem}")
        output.print_status(f"aegisctl: error: backup {m.id} did not verify")
    if result.upload_error:
        output.print_status(f"aegisctl: error: upload failed, backup {m.id} kept locally and "
                            f"marked pending (the next create or `backup upload --pending` "
                            f"retries): {result.upload_error}")
    if failed_verify or result.upload_error:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("list")
def list_(
    ctx: typer.Context,
    local_only: Annotated[bool, typer.Option("--local", help="Do not ask the remote "
                                             "store.")] = False,
    fmt: FormatOption = None,
) -> None:
    """List local and remote backups: id, age, size, format, verified?, uploaded?, pinned?
    Flags the target when its newest good backup is older than backup.max_age.

    Examples:

      aegisctl backup list

      aegisctl backup list --format json
    """
    from aegisctl.backup.service import list_backups

    app_state = state(ctx)
    listing = list_backups(app_state.config(), app_state.target(), remote=not local_only)
    if app_state.fmt(fmt) is OutputFormat.json:
        output.emit_json(listing)
    else:
        output.print_table(
            ["id", "age", "size", "format", "verified", "uploaded", "where", "pinned", "label"],
            [(b.id, _age(b.age_seconds), _human(b.size),
              b.format + (" (encrypted)" if b.encrypted else ""),
              b.verified + (f" ({b.verify_level})" if b.verify_level else ""), b.uploaded,
              b.location, "yes" if b.pinned else "", b.label or "")
             for b in listing.backups],
            title=f"backups of {listing.target} ({listing.directory})")
    if listing.remote_error:
        output.print_status(f"aegisctl: warning: remote not listed: {listing.remote_error}")
    if listing.stale:
        what = (f"the newest good backup ({listing.newest_good}) is "
                f"{_age(listing.newest_good_age_seconds)} old" if listing.newest_good
                else "there is no verified-good backup")
        output.print_status(f"aegisctl: warning: {what}; backup.max_age is "
                            f"{_age(listing.max_age_seconds)}")


@app.command()
def verify(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest local backup.")] = False,
    restore_test: Annotated[bool, typer.Option(
        "--restore-test", help="Also restore into a scratch database (always dropped) and "
        "check rows, indexes, embedding dimensions and a nearest-neighbour query.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="pg_restore jobs for the "
                                      "restore test.")] = 1,
    fmt: FormatOption = None,
) -> None:
    """Check a backup: sha256 of every file, decryption, `pg_restore --list`, and with
    --restore-test a full restore. The result is recorded in the manifest. Exits 1 on any
    problem.

    Examples:

      aegisctl backup verify --latest --restore-test

      aegisctl backup verify 20260101T020000Z --format json
    """
    from aegisctl.backup.verify import verify_backup

    app_state = state(ctx)
    manifest = _pick(app_state, backup_id, latest)
    report = verify_backup(app_state.config(), app_state.target(), manifest,
                           restore_test=restore_test, jobs=jobs)
    v = report.verification
    if app_state.fmt(fmt) is OutputFormat.json:
        output.emit_json({"id": manifest.id, "ok": report.ok, **v.__dict__,
                          "scratch_database": report.scratch_database})
    else:
        for check in v.checks:
            output.print_line(f"ok      {check}")
        for problem in v.problems:
            output.print_line(f"PROBLEM {problem}")
        output.print_line(f"backup {manifest.id}: {v.status} ({v.level})")
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command()
def restore(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest local backup.")] = False,
    target_db: Annotated[str | None, typer.Option(
        "--target-db", help="Restore into this database on the same server (created when "
        "missing) instead of the target's own.")] = None,
    table: Annotated[list[str] | None, typer.Option(
        "--table", help="Only this table (schema.name or name); repeatable. Existing tables "
        "get their rows replaced in one transaction.")] = None,
    clean: Annotated[bool, typer.Option("--clean", help="Drop and recreate the objects in "
                                        "the backup.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Parallel pg_restore jobs "
                                      "(without them: one transaction).")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Allow restoring over a database "
                                        "that holds data.")] = False,
    no_owner: Annotated[bool, typer.Option("--no-owner", help="Do not restore ownership and "
                                           "privileges (other server, other roles).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the backup, show the plan, "
                                          "change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (needed when not on a "
                                      "terminal).")] = False,
    wait_lock: WaitLock = 0.0,
    physical: Annotated[bool, typer.Option("--physical", help="Restore a physical backup into "
                                           "--target-dir (a new or empty folder).")] = False,
    to_time: Annotated[str | None, typer.Option("--to-time", metavar="TS", help="With "
                                                "--physical: recover to this moment.")] = None,
    to_lsn: Annotated[str | None, typer.Option("--to-lsn", metavar="LSN", help="With "
                                               "--physical: recover to this LSN.")] = None,
    target_dir: Annotated[Path | None, typer.Option("--target-dir", file_okay=False, help="With "
                                                    "--physical: where to restore.")] = None,
    fmt: FormatOption = None,
) -> None:
    """Restore a backup into the target's database or --target-db. The backup is checked
    readable before anything is touched; a database that holds data is refused unless
    --force, and you are told exactly what will be overwritten.

    Examples:

      aegisctl backup restore 20260101T020000Z --target-db aegis_restored

      aegisctl backup restore --latest --table episodic_memory --force --yes

      aegisctl backup restore --latest --clean --force --dry-run

      aegisctl backup restore --physical --to-time 2026-01-31T14:05:00Z --target-dir /srv/pitr
    """
    if physical or target_dir or to_time or to_lsn:
        return physical_cmd.restore_physical(ctx, physical=physical, backup_id=backup_id,
                                             latest=latest,
                                             to_time=to_time, to_lsn=to_lsn,
                                             target_dir=target_dir, dry_run=dry_run, fmt=fmt)
    from aegisctl.backup.lock import target_lock
    from aegisctl.backup.restore import plan_restore, run_restore
    from aegisctl.backup.store import BackupStore

    app_state = state(ctx)
    loaded, target = app_state.config(), app_state.target()
    manifest = _pick(app_state, backup_id, latest)
    store = BackupStore(loaded.settings.backup, target.name)
    with target_lock(store.lock_path, "backup restore", wait_lock):
        plan = plan_restore(loaded, target, manifest, target_db=target_db, tables=table or [],
                            clean=clean, jobs=jobs)
        for line in plan.describe():
            output.print_status(line)
        if dry_run:
            output.print_status("dry run: backup checked readable, nothing was changed")
            return
        if plan.overwritten and force:
            _confirm(f"Overwrite {len(plan.overwritten)} table(s) in '{plan.database}'?", yes)
        run_restore(loaded, target, manifest, plan, force=force, no_owner=no_owner)
    output.print_line(f"restored backup {manifest.id} into database '{plan.database}'")


@app.command()
def prune(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be deleted and "
                                          "why; delete nothing.")] = False,
    remote: Annotated[bool, typer.Option("--remote", help="Apply backup.remote.retention to "
                                         "the remote copies instead.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (needed when not on a "
                                      "terminal, e.g. under a timer).")] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Delete backups the retention policy no longer needs: keep everything newer than
    keep_days, the min_keep newest verified-good backups, optional daily/weekly/monthly
    ones, and pinned ones. The last good backup is never deleted. Every deletion goes to
    the audit log.

    Examples:

      aegisctl backup prune --dry-run

      aegisctl backup prune --remote --yes
    """
    from aegisctl.backup.service import prune as run_prune

    app_state = state(ctx)
    loaded, target = app_state.config(), app_state.target()
    preview = run_prune(loaded, target, dry_run=True, remote=remote, wait_lock=wait_lock)
    result = preview
    if not dry_run and preview.plan.delete:
        if app_state.fmt(fmt) is not OutputFormat.json:
            _render_prune(preview)
        _confirm(f"Delete {len(preview.plan.delete)} {preview.where} backup(s)?", yes)
        result = run_prune(loaded, target, dry_run=False, remote=remote, wait_lock=wait_lock)
    if app_state.fmt(fmt) is OutputFormat.json:
        output.emit_json({"where": result.where, "dry_run": dry_run,
                          "keep": result.plan.keep, "delete": result.plan.delete,
                          "deleted": result.deleted})
        return
    if dry_run or not preview.plan.delete:
        _render_prune(result)
    output.print_line(f"{'would delete' if dry_run else 'deleted'} "
                      f"{len(result.plan.delete) if dry_run else len(result.deleted)} "
                      f"{result.where} backup(s)")


def _render_prune(result: PruneResult) -> None:
    rows = [(i, "keep", "; ".join(r)) for i, r in result.plan.keep.items()]
    rows += [(i, "DELETE", why) for i, why in result.plan.delete.items()]
    output.print_table(["id", "action", "why"], sorted(rows), title=f"{result.where} retention")


@app.command()
def upload(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Every backup whose upload is "
                                          "pending.")] = False,
    wait_lock: WaitLock = 0.0,
) -> None:
    """Upload a backup (or every pending one) to the remote store, checking each object's
    size and SHA-256 afterwards.

    Examples:

      aegisctl backup upload --pending

      aegisctl backup upload 20260101T020000Z
    """
    from aegisctl.backup.service import upload as run_upload
    from aegisctl.errors import UsageError

    if bool(backup_id) == pending:
        raise UsageError("give a backup ID or --pending (one of the two)")
    app_state = state(ctx)
    with _progress(app_state) as progress:
        done = run_upload(app_state.config(), app_state.target(), backup_id,
                          wait_lock=wait_lock, progress=progress)
    output.print_line(f"uploaded {len(done)} backup(s){': ' + ', '.join(done) if done else ''}")


@app.command()
def download(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(metavar="ID")],
    wait_lock: WaitLock = 0.0,
) -> None:
    """Fetch a remote backup into the local backup folder (each file's sha256 checked).

    Example:

      aegisctl backup download 20260101T020000Z && aegisctl backup verify 20260101T020000Z
    """
    from aegisctl.backup.service import download as run_download

    app_state = state(ctx)
    manifest = run_download(app_state.config(), app_state.target(), backup_id,
                            wait_lock=wait_lock)
    output.print_line(f"downloaded backup {manifest.id} ({_human(manifest.size)})")


@app.command()
def keep(ctx: typer.Context, backup_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Pin a backup: retention (local and remote) never deletes it.

    Example:

      aegisctl backup keep 20260101T020000Z
    """
    from aegisctl.backup.service import set_pinned

    app_state = state(ctx)
    set_pinned(app_state.config(), app_state.target(), backup_id, True)
    output.print_line(f"backup {backup_id} is pinned")


@app.command()
def unkeep(ctx: typer.Context,
           backup_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Unpin a backup: retention applies to it again.

    Example:

      aegisctl backup unkeep 20260101T020000Z
    """
    from aegisctl.backup.service import set_pinned

    app_state = state(ctx)
    set_pinned(app_state.config(), app_state.target(), backup_id, False)
    output.print_line(f"backup {backup_id} is no longer pinned")


@app.command("key-generate")
def key_generate(path: Annotated[Path, typer.Argument(metavar="FILE", dir_okay=False)]) -> None:
    """Write a new random 256-bit encryption key (hex) to FILE (mode 0600, never overwritten)
    and print its key id. Keep a copy somewhere safe: without it, encrypted backups cannot be
    restored.

    Example:

      aegisctl backup key-generate /etc/aegisctl/backup.key
    """
    from aegisctl.backup.crypto import generate_key_file

    key_id = generate_key_file(path)
    output.print_line(f"wrote a new key to {path} (key id {key_id})")


physical_cmd.register(app)
