"""`backup physical enable|status|disable`: what the server needs, the slot, Barman's config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.backup.physical.engine import (
    Engine,
    barman_version,
    engine_for,
    install_engine,
    write_config,
)
from aegisctl.errors import OperationFailed, UsageError

if TYPE_CHECKING:
    import psycopg

    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target

log = logging.getLogger(__name__)


@dataclass
class SettingChange:
    name: str
    current: str
    wanted: str
    context: str  # sighup: a reload is enough; postmaster: a restart is needed
    applied: bool = False

    @property
    def needs_restart(self) -> bool:
        return self.context == "postmaster"


@dataclass
class EngineCheck:
    name: str
    ok: bool
    hint: str = ""


@dataclass
class PhysicalStatus:
    target: str
    server: str
    directory: str
    barman: str | None
    configured: bool
    slot: str
    slot_exists: bool
    slot_active: bool | None = None
    slot_retained_bytes: int | None = None
    changes: list[SettingChange] = field(default_factory=list)
    restarted: bool = False
    restart_needed: list[str] = field(default_factory=list)
    checks: list[EngineCheck] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    # What blocks physical backups, each one line saying what to do (aegisctl's own probes
    # first: Barman's check only points at its log for some of them).
    problems: list[str] = field(default_factory=list)
    embedded: bool = True
    system_id: str | None = None  # the database system whose backups these are
    legacy: bool = False  # the home and server name of an earlier release, used in place

    def restart_advice(self) -> str:
        if self.embedded:
            return ("aegisctl backup physical enable --restart, or aegisctl local stop && "
                    "aegisctl local start")
        return ("restart the server with its service manager, then run aegisctl backup "
                "physical enable again")

    @property
    def ok(self) -> bool:
        return not self.blocking()

    def blocking(self) -> list[str]:
        # A stopped streamer is reported, not a failure of enable: it is the next step.
        waiting = ("receive_wal_running", "replication_slot", "wal_archive")
        out = []
        if self.restart_needed:  # first: the cause of most other failures then
            out.append(f"a restart of the server is needed for {', '.join(self.restart_needed)} "
                       f"({self.restart_advice()})")
        out += self.problems
        for check in self.checks:
            if check.ok or any(check.name.startswith(w) for w in waiting):
                continue
            if self.problems and check.name.startswith(
                    ("postgresql_streaming", "pg_receivexlog_compatible",
                     "pg_basebackup_compatible")):
                continue  # the replication connection failing: said in aegisctl's words
            out.append(f"barman check {check.name} failed"
                       + (f": {check.hint}" if check.hint else ""))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "server": self.server, "directory": self.directory,
            "system_id": self.system_id, "legacy_home": self.legacy,
            "barman": self.barman, "configured": self.configured, "slot": self.slot,
            "slot_exists": self.slot_exists, "slot_active": self.slot_active,
            "slot_retained_bytes": self.slot_retained_bytes,
            "settings": [{"name": c.name, "current": c.current, "wanted": c.wanted,
                          "applied": c.applied, "needs_restart": c.needs_restart}
                         for c in self.changes],
            "restarted": self.restarted, "restart_needed": self.restart_needed,
            "checks": [{"name": c.name, "ok": c.ok, "hint": c.hint} for c in self.checks],
            "actions": self.actions, "problems": self.blocking(), "ok": self.ok,
        }

    def to_view(self) -> list[Block]:
        from aegisctl.output import Fields, Note, Table

        blocks: list[Block] = [Fields([
            ("target", f"{self.target} (Barman server '{self.server}')"),
            ("directory", self.directory + (" (set up by an earlier release, used in place)"
                                             if self.legacy else "")),
            ("database system", self.system_id or "unknown"),
            ("barman", self.barman or "not installed"),
            ("configured", self.configured),
            ("slot", f"{self.slot}: " + ("absent" if not self.slot_exists else
                                        ("streaming" if self.slot_active else "inactive"))
             + (f", holds {self.slot_retained_bytes} bytes of WAL"
                if self.slot_retained_bytes is not None else "")),
        ], title="physical backups")]
        if self.changes:
            blocks.append(Table(["setting", "was", "now", "applied"],
                                [(c.name, c.current, c.wanted,
                                  "yes" if c.applied else "restart needed" if c.needs_restart
                                  else "no") for c in self.changes]))
        if self.checks:
            blocks.append(Table(["Barman check", "result", "hint"],
                                [(c.name, "OK" if c.ok else "FAILED", c.hint)
                                 for c in self.checks]))
        for action in self.actions:
            blocks.append(Note(action))
        for problem in self.problems:
            blocks.append(Note(f"problem: {problem}", "red"))
        if self.restart_needed:
            blocks.append(Note(
                f"a restart is needed for {', '.join(self.restart_needed)}: it disconnects every "
                f"session and takes a checkpoint ({self.restart_advice()})", "yellow"))
        return blocks


def wanted_settings(loaded: LoadedConfig) -> dict[str, str]:
    physical = loaded.settings.backup.physical
    return {
        "wal_level": "replica",
        "summarize_wal": "on",
        "max_wal_senders": "4",
        "max_replication_slots": "4",
        "max_slot_wal_keep_size": f"{max(1, physical.max_slot_wal_keep_size // 1024**2)}MB",
    }


def _setting_ok(name: str, current: str, wanted: str) -> bool:
    if name == "wal_level":
        return current in ("replica", "logical")
    if name in ("max_wal_senders", "max_replication_slots"):
        return int(current) >= int(wanted)
    if name == "max_slot_wal_keep_size":
        return current != "-1" and _mb(current) <= _mb(wanted)
    return current == wanted


def _mb(value: str) -> int:
    from aegisctl.units import parse_size

    if value.strip() == "-1":
        return -1
    return parse_size(value.replace("B", "iB") if value[-2:-1].isalpha() else value) // 1024**2


def check_settings(conn: psycopg.Connection[Any], loaded: LoadedConfig) -> list[SettingChange]:
    changes = []
    for name, wanted in wanted_settings(loaded).items():
        row = conn.execute("SELECT current_setting(name), context, pending_restart "
                           "FROM pg_settings WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise OperationFailed(f"the server has no setting {name}: PostgreSQL 17+ is needed")
        current, context, pending = row
        if not _setting_ok(name, current, wanted) or pending:
            changes.append(SettingChange(name, current, wanted, context))
    return changes


def slot_state(conn: psycopg.Connection[Any], slot: str) -> tuple[bool, bool | None, int | None]:
    row = conn.execute(
        "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return False, None, None
    return True, bool(row[0]), None if row[1] is None else int(row[1])


def replication_problem(loaded: LoadedConfig, target: Target, engine: Engine) -> str | None:
    """Open a replication connection as Barman will (pg_receivewal, pg_basebackup); None when
    it works, else one line saying what the server's administrator must change."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from aegisctl.backup.physical.engine import conninfo_for

    conninfo = conninfo_for(loaded.settings, target, engine)
    user = str(conninfo_to_dict(conninfo).get("user") or "(your user)")
    try:
        with psycopg.connect(conninfo, replication="true", connect_timeout=10):
            return None
    except psycopg.OperationalError as exc:
        return explain_replication_error(str(exc), user)


def explain_replication_error(message: str, user: str) -> str:
    import re

    detail = " ".join(message.split())
    if "no pg_hba.conf entry for replication connection" in detail:
        host = re.search(r'from host "([^"]+)"', detail)
        where = f"{host.group(1)}/32" if host and ":" not in host.group(1) else \
            f"{host.group(1)}/128" if host else "<this host's address>"
        return (f"replication connections of user {user} are refused by the server's "
                f"pg_hba.conf: add `host replication {user} {where} scram-sha-256` and reload "
                "the server")
    if "REPLICATION" in detail or "permission denied to start WAL sender" in detail:
        return (f"user {user} may not open replication connections: run `ALTER ROLE {user} "
                "REPLICATION` on the server (or use a superuser)")
    if "max_wal_senders" in detail or "number of requested standby connections" in detail:
        return ("the server has no free WAL sender: raise max_wal_senders (a restart of the "
                "server is needed)")
    tail = detail.split("failed: ", 1)[-1]
    return f"replication connection failed: {tail[:300]}"


def engine_checks(engine: Engine) -> list[EngineCheck]:
    data = engine.run_json("check", engine.server, what="run barman check", timeout=300)
    server = (data or {}).get(engine.server, {})
    return [EngineCheck(name, str(v.get("status")).upper() == "OK", str(v.get("hint") or ""))
            for name, v in server.items() if isinstance(v, dict)]


def _status(loaded: LoadedConfig, target: Target, engine: Engine,
            conn: psycopg.Connection[Any] | None) -> PhysicalStatus:
    result = PhysicalStatus(
        target=target.name, server=engine.server, directory=str(engine.home),
        barman=None, configured=engine.server_config.exists(), slot=engine.slot_name,
        slot_exists=False, embedded=target.embedded, system_id=engine.system_id,
        legacy=engine.legacy)
    if engine.installed():
        result.barman = f"{barman_version(engine)} ({engine.executable()})"
    if conn is not None:
        result.slot_exists, result.slot_active, result.slot_retained_bytes = slot_state(
            conn, engine.slot_name)
        result.changes = check_settings(conn, loaded)
        result.restart_needed = [c.name for c in result.changes if c.needs_restart]
    return result


def physical_status(loaded: LoadedConfig, target: Target, *, run_check: bool = True
                    ) -> PhysicalStatus:
    from aegisctl.db import connect

    engine = engine_for(loaded, target)
    with connect(loaded, target, "backup physical status") as conn:
        result = _status(loaded, target, engine, conn)
    if run_check and result.configured and engine.installed():
        from aegisctl.backup.physical.ha import point_at_leader

        point_at_leader(loaded, target, engine, "backup physical status", required=False)
        problem = replication_problem(loaded, target, engine)
        result.problems += [problem] if problem else []
        result.checks = engine_checks(engine)
    return result


def enable_physical(loaded: LoadedConfig, target: Target, *, restart: bool = False,
                    install: bool = True) -> PhysicalStatus:
    """Set what the server needs, create the slot, install Barman, write its config, check."""
    from psycopg import sql

    from aegisctl.db import connect

    engine = engine_for(loaded, target)
    if restart and not target.embedded:
        raise UsageError(f"--restart only restarts the embedded server: restart "
                         f"'{target.name}' with its service manager when enable says so")
    # A Patroni cluster: the settings and the slot go to its DCS configuration, for every
    # member (ALTER SYSTEM would reach the current leader only; see physical/ha.py).
    patroni = target.cluster.patroni if target.cluster is not None else None
    with connect(loaded, target, "backup physical enable", "ddl", needs="direct") as conn:
        changes = check_settings(conn, loaded)
        for change in changes if patroni is None else []:
            if change.current == change.wanted:
                continue  # only pending a restart
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(change.name), sql.Literal(change.wanted)))
        if changes and patroni is None:
            conn.execute("SELECT pg_reload_conf()")
    dcs_actions: list[str] = []
    if patroni is not None:
        from aegisctl.backup.physical.ha import declare_in_dcs, loop_wait, wait_applied

        wanted = {c.name: c.wanted for c in changes if c.current != c.wanted}
        dcs_actions = declare_in_dcs(patroni, target.name, engine.slot_name, wanted)
        if dcs_actions:
            pending = wait_applied(loaded, target, engine.slot_name, list(wanted),
                                   3 * loop_wait(patroni, target.name) + 10)
            if pending:
                dcs_actions.append("Patroni has not applied yet: " + ", ".join(pending)
                                   + " (run enable again in a minute)")
    if changes and restart:
        _restart_embedded(loaded)
    with connect(loaded, target, "backup physical enable", "ddl", needs="direct") as conn:
        still = check_settings(conn, loaded)
        remaining = {c.name for c in still}
        for change in changes:
            change.applied = change.name not in remaining
        # A slot needs wal_level >= replica and max_replication_slots in effect: not before
        # the restart those need.
        slot_blocked = [c.name for c in still if c.needs_restart
                        and c.name in ("wal_level", "max_replication_slots")]
        if slot_blocked or patroni is not None:  # Patroni creates its permanent slots
            created_slot = False
        elif not slot_state(conn, engine.slot_name)[0]:
            # Reserve WAL now: a slot made by CREATE_REPLICATION_SLOT (pg_receivewal,
            # Barman's create_slot=auto) holds nothing back until its first connection.
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)",
                         (engine.slot_name,))
            created_slot = True
        else:
            created_slot = False
        result = _status(loaded, target, engine, conn)
    result.changes = changes
    result.restarted = bool(changes and restart)
    result.actions += dcs_actions
    if created_slot:
        result.actions.append(f"created replication slot {engine.slot_name} (WAL reserved)")
    elif slot_blocked:
        result.actions.append(f"replication slot {engine.slot_name} not created yet: it needs "
                              f"the restart for {', '.join(slot_blocked)}")
    if install and not engine.installed():
        version = install_engine(engine)
        result.actions.append(f"installed Barman {version} in {engine.venv}")
    for path in write_config(loaded, target, engine):
        result.actions.append(f"wrote {path}")
    result.configured = True
    result.barman = f"{barman_version(engine)} ({engine.executable()})"
    problem = replication_problem(loaded, target, engine)
    result.problems += [problem] if problem else []
    result.checks = engine_checks(engine)
    if not result.restart_needed and not result.problems and \
            not any(c.name == "receive_wal_running" and c.ok for c in result.checks):
        result.actions.append("next: run `aegisctl backup wal stream` (or its systemd unit), "
                              "then `aegisctl backup create --physical`")
    return result


def _restart_embedded(loaded: LoadedConfig) -> None:
    from aegisctl.local import server_for

    embedded = loaded.settings.embedded
    server = server_for(embedded.data_dir, embedded.database, embedded.run_as)
    server.stop()
    server.ensure_running()


@dataclass
class DisablePlan:
    target: str
    server: str
    slot: str
    slot_exists: bool
    config: str
    config_exists: bool
    done: bool = False

    def describe(self) -> list[str]:
        lines = []
        if self.slot_exists:
            lines.append(f"drop replication slot {self.slot}: the server stops keeping WAL for "
                         "Barman; the recoverable window ends now")
        if self.config_exists:
            lines.append(f"remove Barman's server config {self.config} (streaming stops; "
                         "backups and archived WAL are kept)")
        return lines or ["nothing to do: physical backups are not enabled"]

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "server": self.server, "slot": self.slot,
                "slot_exists": self.slot_exists, "config": self.config,
                "config_exists": self.config_exists, "done": self.done,
                "actions": self.describe()}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Note

        verb = "done: " if self.done else "would "
        return [Note(verb + line) for line in self.describe()]


def plan_disable(loaded: LoadedConfig, target: Target) -> DisablePlan:
    from aegisctl.db import connect

    engine = engine_for(loaded, target)
    with connect(loaded, target, "backup physical disable", needs="direct") as conn:
        exists = slot_state(conn, engine.slot_name)[0]
    return DisablePlan(target.name, engine.server, engine.slot_name, exists,
                       str(engine.server_config), engine.server_config.exists())


def disable_physical(loaded: LoadedConfig, target: Target, plan: DisablePlan) -> DisablePlan:
    from aegisctl.db import connect

    engine = engine_for(loaded, target)
    if plan.slot_exists:
        with connect(loaded, target, "backup physical disable", needs="direct") as conn:
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                               (engine.slot_name,)).fetchone()
            if row and row[0]:
                raise OperationFailed(
                    f"slot {engine.slot_name} is in use by process {row[0]} (a WAL streamer)",
                    hint="stop `aegisctl backup wal stream` first")
            if target.cluster is not None and target.cluster.patroni is not None:
                # Patroni would create a permanent slot again: it leaves the DCS first, and
                # Patroni then drops it on every member as unknown.
                from aegisctl.backup.physical.ha import forget_in_dcs

                forget_in_dcs(target.cluster.patroni, target.name, engine.slot_name)
            else:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (engine.slot_name,))
    if plan.config_exists and engine.server_config.exists():
        engine.server_config.rename(engine.server_config.with_suffix(".conf.disabled"))
    plan.done = True
    return plan
