"""The erasure ledger's replay after a physical restore or in the drill.

A physical restore (to a moment, or to the end of the WAL) brings back the database as it was
then, forgotten memories included when the recovery point precedes their erasure. Which
erasures the recovered database lacks is read from its own aegis_erasures, as for a logical
restore (aegisctl.memory.replay): no clock is compared, so a point-in-time recovery is exact.

The ledger is read (and validated) before Barman's recover runs. `backup physical restore`
then starts the restored directory once on a private socket (as the drill does: its own
pg_hba, no TCP, archiving off), waits for recovery to end and promote it, replays, and stops it.
When the ledger is empty nothing is started: a restore of a database that never forgot
anything is unchanged. The drill replays into the copy it has started anyway.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.errors import AegisError

if TYPE_CHECKING:
    import psycopg

    from aegisctl.backup.physical.engine import Engine
    from aegisctl.config import LoadedConfig
    from aegisctl.memory.ledger import CurrentLedger
    from aegisctl.memory.replay import ReplayResult
    from aegisctl.targets import Target


@dataclass
class Destination:
    database: str  # the target's database, to replay into
    user: str  # a role of the restored cluster to connect as (the private socket trusts it)


def newest_ledger(loaded: LoadedConfig, target: Target
                  ) -> tuple[CurrentLedger, Destination | None]:
    """The newest ledger (local and remote copies, and the live database's rows when it is
    up) and where to replay it; a damaged copy raises LedgerError before anything is done."""
    from aegisctl.db import connect
    from aegisctl.memory.ledger import current_ledger, read_db_ledger

    current = current_ledger(loaded.settings.backup, target.name)
    destination = None
    try:
        with connect(loaded, target, "backup restore", needs="direct") as conn:
            current.ledger = current.ledger.merged(read_db_ledger(conn))
            row = conn.execute("SELECT current_database(), current_user").fetchone()
            if row:
                destination = Destination(str(row[0]), str(row[1]))
    except AegisError as exc:  # the server is down: what its DSN names
        current.notes.append(f"the live database's ledger was not read ({exc.message})")
        destination = _from_dsn(target)
    return current, destination


def _from_dsn(target: Target) -> Destination | None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(target.direct_dsn or target.dsn)
    except Exception:  # a cluster's {host} template, an unparsable DSN
        return None
    database, user = params.get("dbname"), params.get("user")
    if not database or not user:
        return None
    return Destination(str(database), str(user))


def replay_into(conn: psycopg.Connection[Any], current: CurrentLedger) -> ReplayResult:
    from aegisctl.memory.replay import replay

    return replay(conn, current.ledger, current.notes)


def replay_restored_dir(engine: Engine, data_dir: Path, timeout: float,
                        current: CurrentLedger, destination: Destination | None
                        ) -> ReplayResult:
    """Start the restored data directory privately, let it promote, replay, stop it."""
    import psycopg

    from aegisctl.backup.physical.restore import _Scratch
    from aegisctl.errors import OperationFailed
    from aegisctl.memory.replay import ReplayResult

    if not current.ledger.entries:
        return ReplayResult(0, 0, {}, list(current.ledger.sources), list(current.notes))
    if destination is None:
        raise OperationFailed(
            f"the data directory {data_dir} is restored, but the erasure ledger could not be "
            "replayed: the database is unreachable and its DSN names no database and user; "
            "memories forgotten since the backup may be back",
            hint="start the restored server and run the restore's replay by restoring with the "
                 "target's server up, or forget them again with `aegisctl memory forget`")
    scratch = _Scratch(engine, data_dir, timeout, destination.user)
    try:
        scratch.start()
        scratch.wait_promoted()
        with psycopg.connect(scratch.conninfo(destination.database)) as conn:
            return replay_into(conn, current)
    except (psycopg.Error, OperationFailed) as exc:
        raise OperationFailed(
            f"the data directory {data_dir} is restored, but replaying the erasure ledger "
            f"failed ({str(exc).strip().splitlines()[0]}): memories forgotten since the backup "
            "may be back", hint="forget them again with `aegisctl memory forget` once it "
                                "runs") from None
    finally:
        scratch.stop()
        with contextlib.suppress(OSError):
            scratch.log.unlink()
