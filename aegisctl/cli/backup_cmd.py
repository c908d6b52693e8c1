"""aegisctl backup: create, list, verify, restore, prune, upload, download, keep, unkeep."""

from __future__ import annotations

import contextlib
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aegisctl import output
from aegisctl.backup.physical import hooks as physical_hooks
from aegisctl.cli import offsite_cmd, physical_cmd
from aegisctl.cli.context import AppState, FormatOption, confirm, state
from aegisctl.cli.options import WaitLock, asks, dry_run_option, unless_dry_run, yes_option
from aegisctl.errors import ExitCode

if TYPE_CHECKING:
    from aegisctl.backup.manifest import BackupManifest

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



class DumpFormat(StrEnum):
    custom = "custom"
    directory = "directory"


class VerifyLevel(StrEnum):
    none = "none"
    quick = "quick"
    restore_test = "restore-test"


def _progress(app_state: AppState) -> contextlib.AbstractContextManager[Any]:
    """A one-line status on a terminal (stage and bytes so far); nothing under a timer."""
    from aegisctl.backup.listing import human_size
    from aegisctl.cli.progress import spinner

    return spinner(app_state, lambda stage, done: f"{stage}: {human_size(done)}")


def _pick(app_state: AppState, backup_id: str | None, latest: bool) -> BackupManifest:
    from aegisctl.backup.store import BackupStore
    from aegisctl.errors import UsageError

    store = BackupStore(app_state.config().settings.backup, app_state.target().name)
    if bool(backup_id) == latest:
        raise UsageError("give a backup ID or --latest (one of the two)")
    if not latest:
        return store.load(str(backup_id))
    from aegisctl.backup.systems import foreign_backups

    # The newest of this database's own backups when the folder is shared (systems.py), and
    # never one whose verification failed: --latest means "the newest I can rely on".
    manifests = store.manifests()
    foreign = foreign_backups(app_state.config(), app_state.target(),
                              {m.id: m.system_id for m in manifests})
    failed = {m.id for m in manifests if m.verified == "failed" and m.id not in foreign}
    try:
        picked = store.latest(exclude=set(foreign) | failed)
    except UsageError:
        if failed:
            raise UsageError(f"--latest: every complete backup of target "
                             f"'{app_state.target().name}' failed its verification "
                             f"({', '.join(sorted(failed))})",
                             hint="restore one on purpose by its ID after reading its "
                                  "problems in `aegisctl backup list`, or take a new backup"
                             ) from None
        if not foreign:
            raise
        # Only other databases' dumps (a fresh server beside a shared folder): say so, and
        # how to restore one of them on purpose.
        raise UsageError(f"--latest: the {len(foreign)} backup(s) in {store.folder} are all "
                         "other database systems' (a shared backup folder)",
                         hint="pick one on purpose: `aegisctl backup restore ID` (see "
                              "`aegisctl backup list`)") from None
    newer_failed = sorted(i for i in failed if i > picked.id)
    if newer_failed:
        output.print_status(f"--latest: passed over {', '.join(newer_failed)} (verification "
                            f"failed); picked {picked.id}")
    return picked


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
    physical: Annotated[bool, typer.Option("--physical", hidden=True, help="A physical backup through "
                                           "Barman instead (backup physical enable).")] = False,
    incremental: Annotated[bool, typer.Option("--incremental", hidden=True, help="With --physical: only "
                                              "what changed since --parent.")] = False,
    parent: Annotated[str | None, typer.Option("--parent", metavar="ID", hidden=True, help="Parent of an "
                                               "incremental (default: the newest).")] = None,
    fmt: FormatOption = None,
) -> None:
    """Dump the target with pg_dump into the backup folder, write its manifest, verify it,
    and upload it (and any pending one) when a remote is configured. Exits 1 when the
    verification or the upload fails (the local backup is kept, marked pending), 2 when the
    upload cannot work as configured (no credentials, no such bucket).

    Examples:

      aegisctl backup create --label nightly

      aegisctl backup create --dump-format directory --jobs 2 --globals --format json

      aegisctl backup create --dump-format directory --jobs 2 --verify restore-test

    Physical backups: aegisctl backup physical create.
    """
    if physical or incremental:
        return physical_cmd.create_physical(ctx, incremental=incremental, parent=parent, fmt=fmt,
                                            wait_lock=wait_lock)
    from aegisctl.backup.dump import CreateOptions
    from aegisctl.backup.service import run_create

    app_state = state(ctx)
    app_state.require_session("backup create")  # pg_dump holds a session and a snapshot
    options = CreateOptions(label=label, format=dump_format.value if dump_format else None,
                            jobs=jobs, compress=compress, globals=globals_)
    with _progress(app_state) as progress:
        reads = app_state.config().settings.backup.source == "replica"
        result = run_create(app_state.config(), app_state.target(reads), options,
                            wait_lock=wait_lock, verify=verify.value if verify else None,
                            upload=not no_upload, progress=progress)
    output.render(result, app_state.fmt(fmt))
    for problem in result.erasure_ledger.problems if result.erasure_ledger else []:
        output.warn(problem)
    m = result.manifest
    if result.verification and result.verification.interrupted:
        output.print_status(f"aegisctl: error: {result.verification.interrupted_message()}")
    elif result.verify_failed and result.verification:
        for problem in result.verification.verification.problems:
            output.print_status(f"verify: {problem}")
        output.print_status(f"aegisctl: error: backup {m.id} did not verify")
    for backup_id, error in result.uploads.failed.items():
        if backup_id != m.id:
            output.warn(f"older backup {backup_id} is still pending "
                                f"upload: {error}")
    if result.upload_error:
        output.print_status(f"aegisctl: error: upload failed, backup {m.id} kept locally and "
                            f"marked pending (the next create or `backup upload --pending` "
                            f"retries): {result.upload_error}")
    if result.upload_error and result.uploads.exit_codes.get(m.id) == ExitCode.USAGE:
        raise typer.Exit(int(ExitCode.USAGE))  # credentials or bucket: fix the config
    if result.verify_failed or result.upload_error:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("list")
def list_(
    ctx: typer.Context,
    local_only: Annotated[bool, typer.Option("--local", help="Do not ask the remote "
                                             "store.")] = False,
    problems: Annotated[bool, typer.Option("--problems", help="Exit 1 when any backup is not "
                                           "ok (missing files, no manifest, manifest "
                                           "unreadable) or the remote cannot be listed.")
                        ] = False,
    fmt: FormatOption = None,
) -> None:
    """List every local and remote backup with its state (ok, missing files, no manifest,
    manifest unreadable), age, size, format, verified?, uploaded?, pinned? With physical
    backups enabled, they follow (type, parent, chain, size, verified) with the recoverable
    window, under "physical" in the JSON.
    Flags the target when its newest good backup is older than backup.max_age.

    Examples:

      aegisctl backup list

      aegisctl backup list --problems --format json
    """
    from aegisctl.backup.listing import human_age
    from aegisctl.backup.service import list_backups
    from aegisctl.units import format_duration

    app_state = state(ctx)
    loaded, target = app_state.config(), app_state.target()
    listing = list_backups(loaded, target, remote=not local_only)
    physical_on, physical_problem = physical_hooks.physical_state(loaded, target)
    if physical_problem:
        output.warn(f"physical backups not listed: "
                            f"{physical_problem}")
    if physical_on:
        from aegisctl.backup.physical.backups import physical_listing

        shown: Any = physical_hooks.WithPhysical(listing, physical_listing(loaded, target))
    else:
        shown = listing
    # Physical backups in the remote store, and the window the store alone can restore.
    output.render(shown if local_only else offsite_cmd.with_remote(shown, loaded, target),
                  app_state.fmt(fmt))
    if listing.remote_error:
        output.warn(f"remote not listed: {listing.remote_error}")
    if listing.stale:
        what = (f"the newest good backup ({listing.newest_good}) is "
                f"{human_age(listing.newest_good_age_seconds)} old" if listing.newest_good
                else "there is no verified-good backup")
        output.warn(f"{what}; backup.max_age is "
                            f"{format_duration(listing.max_age_seconds)}")
    if problems and listing.problems:
        for problem in listing.problems:
            output.print_status(f"aegisctl: problem: {problem}")
        raise typer.Exit(int(ExitCode.FAILED))


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
    remote: Annotated[bool, typer.Option(
        "--remote", help="Check the remote copy instead: every object there, its size and the "
        "checksums recorded at upload (HEAD). A copy missing or damaged is marked pending "
        "(the next upload --pending sends it again). With --latest: the newest backup ever "
        "uploaded.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="With --remote: download every object "
                                       "and hash it.")] = False,
    every: Annotated[bool, typer.Option("--all", help="With --remote: every backup ever "
                                        "uploaded (physical backups and WAL too).")] = False,
    physical: Annotated[bool, typer.Option("--physical", help="With --remote: only the "
                                           "physical backups and WAL in the store.")] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Check a backup: sha256 of every file, decryption, `pg_restore --list`, and with
    --restore-test a full restore. With --remote, the remote copy instead (every object,
    its size and the checksums recorded at upload; --deep downloads and hashes them). The
    result is recorded in the manifest. Exits 1 on any problem, 3 when the remote store
    cannot be reached, 4 when another run holds the target's backup lock (a prune could
    delete the backup while it is read). A check that could not run to completion
    (pg_restore killed, the server gone) is "interrupted": the backup keeps its previous
    verification, exit 1 naming the cause.

    Examples:

      aegisctl backup verify --latest --restore-test

      aegisctl backup verify 20260101T020000Z --format json

      aegisctl backup verify --remote --all --deep

      aegisctl backup verify --remote --physical
    """
    from aegisctl.backup.verify import verify_locked
    from aegisctl.errors import OperationFailed, UsageError

    app_state = state(ctx)
    if physical:
        return offsite_cmd.verify_remote(app_state, remote=remote, deep=deep, fmt=fmt,
                                         wait_lock=wait_lock, logical=None)
    if remote and every and offsite_cmd.remote_has_physical(app_state):
        return offsite_cmd.verify_remote(app_state, remote=remote, deep=deep, fmt=fmt,
                                         wait_lock=wait_lock, logical=lambda: _verify_remote(
                                             app_state, backup_id, latest, remote, deep, every,
                                             restore_test, wait_lock, fmt, render=False))
    if remote or deep or every:
        _verify_remote(app_state, backup_id, latest, remote, deep, every, restore_test,
                       wait_lock, fmt)
        return
    if bool(backup_id) == latest:
        raise UsageError("give a backup ID or --latest (one of the two)")
    if restore_test:
        # a scratch database: a pooler serves only the databases it is configured for
        app_state.require_session("backup verify --restore-test", "direct")
    report = verify_locked(app_state.config(), app_state.target(), backup_id,
                           restore_test=restore_test, jobs=jobs, wait_lock=wait_lock)
    output.render(report, app_state.fmt(fmt))
    if restore_test:
        from aegisctl.cli.maint_cmd import prewarm_hook

        prewarm_hook(app_state, "restore_test")
    if report.interrupted:
        raise OperationFailed(report.interrupted_message())
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command()
@asks(lambda p: not p.get("dry_run") and not (p.get("physical") or p.get("target_dir")
                                                    or p.get("to_time") or p.get("to_lsn")
                                                    or p.get("from_remote")))
def restore(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    latest: Annotated[bool, typer.Option(
        "--latest", help="The newest local backup whose verification did not fail.")] = False,
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
    dry_run: Annotated[bool, dry_run_option("Check the backup, show the plan, "
                                          "change nothing.")] = False,
    yes: Annotated[bool, yes_option("Do not ask (needed when not on a "
                                      "terminal).")] = False,
    into_system_database: Annotated[bool, typer.Option(
        "--into-system-database", help="Allow restoring into a template database "
        "(template1...) or the maintenance database (postgres): refused without it.")] = False,
    wait_lock: WaitLock = 0.0,
    physical: Annotated[bool, typer.Option("--physical", hidden=True, help="Restore a physical backup into "
                                           "--target-dir (a new or empty folder).")] = False,
    to_time: Annotated[str | None, typer.Option("--to-time", metavar="TS", hidden=True, help="With "
                                                "--physical: recover to this moment.")] = None,
    to_lsn: Annotated[str | None, typer.Option("--to-lsn", metavar="LSN", hidden=True, help="With "
                                               "--physical: recover to this LSN.")] = None,
    target_dir: Annotated[Path | None, typer.Option("--target-dir", file_okay=False, hidden=True, help="With "
                                                    "--physical: where to restore.")] = None,
    from_remote: Annotated[bool, typer.Option("--from-remote", hidden=True, help="With --physical: "
                                              "from the remote store alone.")] = False,
    system_id: Annotated[str | None, typer.Option("--system-id", hidden=True, help="With "
                                                  "--from-remote: whose backups.")] = None,
    fmt: FormatOption = None,
) -> None:
    """Restore a backup into the target's database or --target-db. The backup is checked
    readable before anything is touched; a database that holds data is refused unless
    --force, and you are told exactly what will be overwritten.

    Examples:

      aegisctl backup restore 20260101T020000Z --target-db aegis_restored

      aegisctl backup restore --latest --table episodic_memory --force --yes

      aegisctl backup restore --latest --clean --force --dry-run

      aegisctl backup restore --latest --target-db aegis_restored --dry-run

    Physical backups: aegisctl backup physical restore.
    """
    if physical or target_dir or to_time or to_lsn or from_remote:
        return physical_cmd.restore_physical(ctx, physical=physical, backup_id=backup_id,
                                             latest=latest,
                                             to_time=to_time, to_lsn=to_lsn,
                                             target_dir=target_dir, dry_run=dry_run, fmt=fmt,
                                             wait_lock=wait_lock, from_remote=from_remote,
                                             system_id=system_id)
    from aegisctl.backup.restore import RestoreResult, plan_restore, run_restore
    from aegisctl.locks import target_lock

    app_state = state(ctx)
    loaded, target = app_state.config(), app_state.target()
    app_state.require_session("backup restore", "direct")  # pg_restore; maybe a new database
    manifest = _pick(app_state, backup_id, latest)
    with target_lock(loaded.settings, target.name, "backup restore", wait_lock):
        plan = plan_restore(loaded, target, manifest, target_db=target_db, tables=table or [],
                            clean=clean, jobs=jobs, allow_system_db=into_system_database)
        for line in plan.describe():
            output.print_status(line)
        if dry_run:
            output.render(RestoreResult(plan, dry_run=True, restored=False),
                          app_state.fmt(fmt))
            return
        if plan.overwritten and force:
            confirm(f"Overwrite {len(plan.overwritten)} table(s) in '{plan.database}'?", yes)
        elif plan.system_database:
            confirm(f"Restore into '{plan.database}', {plan.system_database}?", yes)
        erasures = run_restore(loaded, target, manifest, plan, force=force, no_owner=no_owner)
    output.render(RestoreResult(plan, dry_run=False, restored=True, erasures=erasures),
                  app_state.fmt(fmt))


@app.command()
@asks(unless_dry_run)
def prune(
    ctx: typer.Context,
    dry_run: Annotated[bool, dry_run_option("Show what would be deleted and "
                                          "why; delete nothing.")] = False,
    remote: Annotated[bool, typer.Option("--remote", help="Apply backup.remote.retention to "
                                         "the remote copies instead.")] = False,
    yes: Annotated[bool, yes_option("Do not ask (needed when not on a "
                                      "terminal, e.g. under a timer).")] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Delete backups the retention policy no longer needs: keep everything newer than
    keep_days, the min_keep newest verified-good backups, optional daily/weekly/monthly
    ones, and pinned ones. The last good backup is never deleted. Every deletion goes to
    the audit log. Physical backups, when enabled, are pruned by the same rules a whole
    chain at a time (never what the recoverable window relies on).

    Examples:

      aegisctl backup prune --dry-run

      aegisctl backup prune --remote --yes
    """
    from aegisctl.backup.prune import PrunePreview, PruneResult, apply_prune, plan_prune

    app_state = state(ctx)
    loaded, target = app_state.config(), app_state.target()
    plan = plan_prune(loaded, target, remote=remote, wait_lock=wait_lock)
    # Physical backups (local only) follow the same retention, whole chains at a time.
    physical: Any = None
    if not remote and physical_hooks.enabled(loaded, target):
        from aegisctl.backup.physical.prune import prune_physical

        physical = prune_physical(loaded, target, dry_run=True)
    elif remote:  # physical chains and WAL in the store: backup.remote.retention too
        physical = offsite_cmd.remote_prune_plan(loaded, target)
    deleting = len(plan.delete) + (len(physical.delete) if physical else 0)
    if physical is not None and remote and physical.wal_delete:
        deleting += 1  # old WAL files go even when no backup does
    if not dry_run and not deleting and remote:
        # Nothing to delete, but a killed upload's parts may be there to abort.
        output.render(apply_prune(loaded, target, plan, wait_lock=wait_lock),
                      app_state.fmt(fmt))
        return
    if dry_run or not deleting:
        preview: Any = PruneResult(plan, dry_run=dry_run)
        output.render(physical_hooks.WithPhysical(preview, physical) if physical else preview,
                      app_state.fmt(fmt))
        return
    if app_state.fmt(fmt) != "json":
        output.render(PrunePreview(plan), "table")
        if physical:
            output.render(physical, "table")
    else:
        for backup_id, why in plan.delete.items():
            output.print_status(f"delete {backup_id}: {why}")
        for backup_id, why in (physical.delete.items() if physical else []):
            output.print_status(f"delete physical {backup_id}: {why}")
    confirm(f"Delete these {deleting} {plan.where} backup(s)?", yes)
    result: Any = apply_prune(loaded, target, plan, wait_lock=wait_lock) if plan.delete \
        else PruneResult(plan, dry_run=False)
    if physical and remote:
        result = physical_hooks.WithPhysical(
            result, offsite_cmd.apply_remote_prune(loaded, target, wait_lock))
    elif physical and physical.delete:
        from aegisctl.backup.physical.prune import prune_physical

        # Planned again at deletion: a backup taken since is newer than anything deleted.
        result = physical_hooks.WithPhysical(result, prune_physical(loaded, target,
                                                                    dry_run=False))
    output.render(result, app_state.fmt(fmt))


def _verify_remote(app_state: Any, backup_id: str | None, latest: bool, remote: bool,
                   deep: bool, every: bool, restore_test: bool, wait_lock: float,
                   fmt: Any, render: bool = True) -> Any:
    from aegisctl.backup.remote_check import verify_remote_locked
    from aegisctl.errors import UsageError

    if not remote:
        raise UsageError("--deep and --all go with --remote")
    if restore_test:
        raise UsageError("--restore-test checks the local copy: not with --remote")
    if sum((bool(backup_id), latest, every)) != 1:
        raise UsageError("give a backup ID, --latest or --all (one of them)")
    result = verify_remote_locked(app_state.config(), app_state.target(), backup_id,
                                  every=every, deep=deep, wait_lock=wait_lock)
    if not render:
        return result
    output.render(result, app_state.fmt(fmt))
    if not result.ok:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command()
def upload(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Every backup whose upload is "
                                          "pending (each is tried, whatever the others do).")
                       ] = False,
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Upload a backup (or every pending one) to the remote store, checking each object's
    size and SHA-256 afterwards. Each backup is tried whatever the others do. With
    --pending, pending physical backups and WAL go too (backup physical upload). Exits 1 when
    any upload failed, 2 for a configuration problem (no credentials, no such bucket), 3
    when the store cannot be reached.

    Examples:

      aegisctl backup upload --pending

      aegisctl backup upload 20260101T020000Z
    """
    from aegisctl.backup.service import upload as run_upload
    from aegisctl.errors import UsageError

    if bool(backup_id) == pending:
        raise UsageError("give a backup ID or --pending (one of the two)")
    app_state = state(ctx)
    loaded, target = app_state.config(), app_state.target()
    with _progress(app_state) as progress:
        result = run_upload(loaded, target, backup_id, wait_lock=wait_lock, progress=progress)
        # --pending: physical backups and WAL not yet in the store go too.
        shipped = offsite_cmd.ship_now(loaded, target, wait=max(wait_lock, 60.0),
                                       progress=progress) \
            if pending and offsite_cmd.shipping_enabled(loaded, target) else None
    output.render(offsite_cmd.With(result, "physical", shipped) if shipped else result,
                  app_state.fmt(fmt))
    for failed, error in result.failed.items():
        output.print_status(f"aegisctl: error: upload of backup {failed} failed: {error}")
    if not result.ok:
        raise typer.Exit(result.exit_code)
    if shipped:
        offsite_cmd.fail_on(shipped)


@app.command()
def download(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(metavar="ID")],
    wait_lock: WaitLock = 0.0,
    fmt: FormatOption = None,
) -> None:
    """Fetch a remote backup into the local backup folder (each file's sha256 checked).

    Example:

      aegisctl backup download 20260101T020000Z && aegisctl backup verify 20260101T020000Z
    """
    from aegisctl.backup.service import download as run_download

    app_state = state(ctx)
    result = run_download(app_state.config(), app_state.target(), backup_id,
                          wait_lock=wait_lock)
    output.render(result, app_state.fmt(fmt))


@app.command()
def keep(ctx: typer.Context, backup_id: Annotated[str, typer.Argument(metavar="ID")],
         wait_lock: WaitLock = 0.0, fmt: FormatOption = None) -> None:
    """Pin a backup: retention (local and remote) never deletes it.

    Example:

      aegisctl backup keep 20260101T020000Z
    """
    from aegisctl.backup.service import set_pinned

    app_state = state(ctx)
    result = set_pinned(app_state.config(), app_state.target(), backup_id, True,
                        wait_lock=wait_lock)
    output.render(result, app_state.fmt(fmt))


@app.command()
def unkeep(ctx: typer.Context,
           backup_id: Annotated[str, typer.Argument(metavar="ID")],
           wait_lock: WaitLock = 0.0, fmt: FormatOption = None) -> None:
    """Unpin a backup: retention applies to it again.

    Example:

      aegisctl backup unkeep 20260101T020000Z
    """
    from aegisctl.backup.service import set_pinned

    app_state = state(ctx)
    result = set_pinned(app_state.config(), app_state.target(), backup_id, False,
                        wait_lock=wait_lock)
    output.render(result, app_state.fmt(fmt))


@app.command("key-generate")
def key_generate(ctx: typer.Context,
                 path: Annotated[Path, typer.Argument(metavar="FILE", dir_okay=False)],
                 fmt: FormatOption = None) -> None:
    """Write a new random 256-bit encryption key (hex) to FILE (mode 0600, never overwritten)
    and print its key id. Keep a copy somewhere safe: without it, encrypted backups cannot be
    restored.

    Example:

      aegisctl backup key-generate /etc/aegisctl/backup.key
    """
    from aegisctl.backup.crypto import generate_key_file

    output.render(generate_key_file(path), state(ctx).fmt(fmt))


physical_cmd.register(app)
