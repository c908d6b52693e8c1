"""Physical backups of a cluster target: Barman and the WAL streamer follow the leader.

- **Where Barman connects.** Its conninfo names the member that leads right now: resolved
  through Patroni's `/cluster` (or, for a multi-host DSN, libpq's `read-write` choice) each
  time the streamer (re)starts its receiver and at the start of every backup, restore and
  drill, then proven out of recovery on a connection of its own before Barman is pointed there.
- **The slot.** A Patroni cluster gets it as a *permanent slot* in the DCS configuration
  (`slots: {aegisctl_barman: {type: physical}}`, written by `backup physical enable`): Patroni
  creates it on every member and advances the replicas' copies to the leader's position, so the
  new leader already holds the WAL the streamer has not fetched yet. A slot created by SQL would
  be dropped by Patroni as unknown (and would not exist on the new leader). A multi-host target
  without Patroni gets the slot created on the new leader by the streamer.
- **The settings** `enable` needs (summarize_wal, max_slot_wal_keep_size...) go to the DCS
  too (`postgresql.parameters`), so every member has them when it becomes the leader.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aegisctl.errors import OperationFailed

if TYPE_CHECKING:
    import psycopg

    from aegisctl.backup.physical.engine import Engine
    from aegisctl.cluster.members import ClusterBinding
    from aegisctl.cluster.settings import PatroniSettings
    from aegisctl.config import LoadedConfig
    from aegisctl.targets import Target

log = logging.getLogger(__name__)


@dataclass
class Upstream:
    """The leader the receiver streams from."""

    member: str | None  # the Patroni member (None: libpq chose among a multi-host DSN)
    timeline: int
    moved: bool  # Barman was pointed elsewhere before
    slot_created: bool = False


def forget_choice(binding: ClusterBinding) -> None:
    """A long-running command asks again: the leader it chose may have changed since."""
    binding.chosen.clear()
    binding.identity = None
    binding.view = None


def leader_dsn(target: Target) -> str:
    """The DSN Barman uses: the leader this command has chosen (or chooses now)."""
    from aegisctl.cluster.members import member_conninfo

    assert target.cluster is not None
    return member_conninfo(target.cluster, "leader")


def point_at_leader(loaded: LoadedConfig, target: Target, engine: Engine, command: str, *,
                    required: bool = True) -> None:
    """Before a Barman command that connects (backup, switch-wal, check, recover): its
    configuration names the leader of now. With `required` False (a restore, which must work
    while the cluster is down) a cluster without a leader leaves the configuration as it is."""
    if target.cluster is None or not engine.server_config.exists():
        return
    from aegisctl.errors import AegisError

    try:
        follow_leader(loaded, target, engine, command, need_slot=required)
    except AegisError as exc:
        if required:
            raise
        log.info("cannot find the cluster's leader now (%s): Barman's configuration is left "
                 "as it is", exc.message)


def follow_leader(loaded: LoadedConfig, target: Target, engine: Engine,
                  command: str, *, need_slot: bool = True) -> Upstream | None:
    """For a cluster target: find the leader now, prove it on a connection (out of recovery,
    the slot there), and point Barman's configuration at it. None for a single server.
    Raises ConnectionFailed (no leader yet), RoleChanged (the member is still in recovery) or
    OperationFailed (the slot is missing on a Patroni leader)."""
    binding = target.cluster
    if binding is None:
        return None
    from aegisctl.backup.physical.engine import write_config
    from aegisctl.cluster.members import server_identity
    from aegisctl.db import connect

    forget_choice(binding)
    created = False
    with connect(loaded, target, command, needs="direct") as conn:
        identity = server_identity(conn)
        if need_slot and not _slot_exists(conn, engine.slot_name):
            created = _missing_slot(conn, binding, engine.slot_name, target.name)
    chosen = binding.chosen.get("leader")
    before = _configured_conninfo(engine)
    write_config(loaded, target, engine)
    return Upstream(member=chosen.member if chosen else None, timeline=identity.timeline,
                    moved=before is not None and before != _configured_conninfo(engine),
                    slot_created=created)


def leader_moved(target: Target, upstream: Upstream) -> str | None:
    """Patroni's current leader when it is not the member being streamed from (a switchover
    that left the old leader running, or a receiver stuck on a dead one); None otherwise."""
    binding = target.cluster
    if binding is None or binding.patroni is None or upstream.member is None:
        return None
    from aegisctl.cluster.patroni import fetch_cluster
    from aegisctl.errors import AegisError

    try:
        leader = fetch_cluster(binding.patroni, target.name).leader
    except AegisError:
        return None  # no answer: the receiver's own connection tells
    if leader is not None and leader.name != upstream.member:
        return leader.name
    return None


def _slot_exists(conn: psycopg.Connection[Any], slot: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND "
                       "slot_type = 'physical'", (slot,)).fetchone()
    return row is not None


def _missing_slot(conn: psycopg.Connection[Any], binding: ClusterBinding, slot: str,
                  target_name: str) -> bool:
    if binding.patroni is not None:
        raise OperationFailed(
            f"target '{target_name}': replication slot {slot} does not exist on the leader "
            "(Patroni creates a permanent slot within loop_wait of a change)",
            hint="if it persists: aegisctl backup physical enable (declares it permanent)")
    # No Patroni to keep it on every member: create it on this leader, WAL reserved.
    conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
    log.warning("target '%s': created replication slot %s on the new leader", target_name, slot)
    return True


def _configured_conninfo(engine: Engine) -> str | None:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(engine.server_config.read_text())
        return parser.get(engine.server, "conninfo", fallback=None)
    except (OSError, configparser.Error):
        return None


# ---------------------------------------------------------------------------------------------
# enable: the permanent slot and the settings, through Patroni's DCS configuration


def by_hand(slot: str, parameters: dict[str, str]) -> str:
    params = "".join(f" -p {k}={v}" for k, v in parameters.items())
    return (f"patronictl edit-config --force -s 'slots.{slot}.type=physical'{params} "
            "(or allow PATCH /config on the REST API)")


def declare_in_dcs(settings: PatroniSettings, target_name: str, slot: str,
                   parameters: dict[str, str]) -> list[str]:
    """Make `slot` a permanent physical slot and set `parameters` for every member, in one
    PATCH of the dynamic configuration (only what is missing). Returns what was changed."""
    from aegisctl.cluster.patroni import fetch_config, patch_config

    config, base = fetch_config(settings, target_name)
    slots = config.get("slots") if isinstance(config.get("slots"), dict) else {}
    declared = slots.get(slot) if isinstance(slots, dict) else None
    current = config.get("postgresql", {}).get("parameters", {}) \
        if isinstance(config.get("postgresql"), dict) else {}
    change: dict[str, Any] = {}
    done = []
    if not (isinstance(declared, dict) and declared.get("type") == "physical"):
        change["slots"] = {slot: {"type": "physical"}}
        done.append(f"declared replication slot {slot} permanent in Patroni's configuration "
                     "(every member keeps it)")
    wanted = {k: v for k, v in parameters.items()
              if not isinstance(current, dict) or str(current.get(k)) != v}
    if wanted:
        change["postgresql"] = {"parameters": wanted}
        done.append("set " + ", ".join(f"{k}={v}" for k, v in wanted.items())
                    + " for every member in Patroni's configuration")
    if change:
        patch_config(settings, target_name, base, change, by_hand(slot, parameters))
    return done


def forget_in_dcs(settings: PatroniSettings, target_name: str, slot: str) -> None:
    """`disable`: the slot is no longer permanent (null removes a key in Patroni's PATCH)."""
    from aegisctl.cluster.patroni import fetch_config, patch_config

    config, base = fetch_config(settings, target_name)
    slots = config.get("slots")
    if isinstance(slots, dict) and slot in slots:
        patch_config(settings, target_name, base, {"slots": {slot: None}},
                     f"patronictl edit-config, and remove slots.{slot}")


def loop_wait(settings: PatroniSettings, target_name: str) -> float:
    from aegisctl.cluster.patroni import fetch_config

    value = fetch_config(settings, target_name)[0].get("loop_wait")
    return float(value) if isinstance(value, int | float) and 0 < value <= 300 else 10.0


def wait_applied(loaded: LoadedConfig, target: Target, slot: str, names: list[str],
                 timeout: float) -> list[str]:
    """Until the leader has the slot and the settings in effect (Patroni applies a change on
    its next loop). Returns what is still missing when `timeout` passes."""
    from aegisctl.backup.physical.setup import check_settings
    from aegisctl.db import connect

    deadline = time.monotonic() + timeout
    while True:
        assert target.cluster is not None
        forget_choice(target.cluster)
        with connect(loaded, target, "backup physical enable", needs="direct") as conn:
            pending = [c.name for c in check_settings(conn, loaded)
                       if c.name in names and not c.needs_restart]
            if not _slot_exists(conn, slot):
                pending.append(f"slot {slot}")
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(1.0)


# ---------------------------------------------------------------------------------------------
# After a failover: a receiver ahead of the new leader


def realign_receiver(loaded: LoadedConfig, target: Target, engine: Engine) -> str:
    """The receiver got WAL from the old leader that the new one never received (asynchronous
    replication; it died with the old leader): pg_receivewal asks to resume inside that lost
    branch and the new leader refuses, every time. Everything up to the switch point is already
    in the receiver's files (it was ahead), so it resumes at the start of the switch point's
    segment on the new timeline; the lost branch's segments not yet archived are set aside in
    aegisctl's folder (never deleted). Barman's own `receive-wal --reset` would resume on the
    new timeline at the slot's position, which may lie before the new timeline began."""
    import psycopg

    from aegisctl.backup.physical.engine import conninfo_for
    from aegisctl.backup.physical.timelines import (
        SEGMENT_SIZE,
        format_lsn,
        parse_history,
        parse_segment,
        segment_name,
    )

    with psycopg.connect(conninfo_for(loaded.settings, target, engine), replication="true",
                         autocommit=True, connect_timeout=10) as conn:
        # The replication protocol's own commands: simple queries only.
        system = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")
        timeline = int((system.get_value(0, 1) or b"0").decode())
        if timeline < 2:
            return "nothing to realign: the leader is on timeline 1"
        history = conn.pgconn.exec_(f"TIMELINE_HISTORY {timeline}".encode())
        content = history.get_value(0, 1) or b""
    chain = parse_history(bytes(content).decode("utf-8", "replace"), timeline)
    if chain is None:
        raise OperationFailed(f"the leader's history of timeline {timeline} is not valid")
    switch = chain[-1].begin_segment
    streaming = engine.server_dir / "streaming"
    aside = engine.make_dir(engine.state_dir / "lost-branch")
    moved = []
    for entry in sorted(streaming.iterdir()):
        pos = parse_segment(entry.name.removesuffix(".partial"))
        if pos is not None and pos[0] < timeline and pos[1] > switch and entry.is_file():
            entry.rename(aside / entry.name)
            moved.append(entry.name)
    start = streaming / (segment_name(timeline, switch) + ".partial")
    if not start.exists() and not start.with_suffix("").exists():
        start.touch(0o600)  # pg_receivewal resumes at the start of the newest .partial
        engine.chown(start)
    return (f"the receiver was ahead of the new leader (WAL the old leader wrote after the "
            f"switch point, lost with it): resuming on timeline {timeline} at "
            f"{format_lsn(switch * SEGMENT_SIZE)}"
            + (f"; set aside {', '.join(moved)} in {aside}" if moved else ""))
