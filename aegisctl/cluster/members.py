"""Which member of a cluster a command works on, and proof on its own connection that it is
still the right one.

Writes, migrations, maintenance, cleanup and physical backups need the leader; reads that allow
it (diag, search, logical backups with `backup.source: replica`) prefer a streaming replica
within `patroni.max_lag`, and fall back to the leader. `/cluster` trails the members by up to
Patroni's loop_wait (and shows a dead leader as running until its key expires), so the choice is
confirmed on the connection itself: `pg_is_in_recovery()`, the system identifier and the
timeline. A multi-host DSN without a REST API gets the same choice from libpq
(`target_session_attrs`) and the same confirmation.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aegisctl.cluster.patroni import ClusterView, MemberInfo, fetch_cluster
from aegisctl.cluster.settings import PatroniSettings
from aegisctl.errors import ConnectionFailed, RoleChanged

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

Need = Literal["leader", "replica"]


@dataclass
class ServerIdentity:
    """What a connection is attached to: proof that two connections saw the same leader."""

    in_recovery: bool
    system_identifier: int
    timeline: int


@dataclass
class Chosen:
    need: Need
    member: str | None  # None: a multi-host DSN, where libpq chose
    role: str
    host: str | None = None
    port: int | None = None
    lag: int | None = None
    reason: str = ""


@dataclass
class ClusterBinding:
    """A cluster target's state during one command: the configured DSN (a template, or
    multi-host), what the command wants, and what was chosen and confirmed."""

    target_name: str
    dsn: str
    patroni: PatroniSettings | None = None
    prefer: Need = "leader"  # a read command sets "replica"
    chosen: dict[str, Chosen] = field(default_factory=dict)
    identity: ServerIdentity | None = None  # the leader as first confirmed
    check_feedback: bool = False  # a dump: warn when the replica has hot_standby_feedback off
    view: ClusterView | None = None

    @property
    def multi_host(self) -> bool:
        return self.patroni is None


def is_multi_host(dsn: str) -> bool:
    """A libpq DSN naming more than one host (host=a,b or postgresql://a,b/db)."""
    if "," not in dsn:
        return False
    from psycopg.conninfo import conninfo_to_dict

    try:
        return "," in str(conninfo_to_dict(dsn).get("host") or "")
    except Exception:  # an invalid DSN is reported when connecting, with its own message
        return False


def binding_for(target_name: str, dsn: str, patroni: PatroniSettings | None
                ) -> ClusterBinding | None:
    if patroni is not None or is_multi_host(dsn):
        return ClusterBinding(target_name=target_name, dsn=dsn, patroni=patroni)
    return None


def need_for(binding: ClusterBinding, kind: str) -> Need:
    """Schema changes always go to the leader; other work where the command allows it (only
    a command that merely reads sets `prefer` to "replica")."""
    return "leader" if kind == "ddl" else binding.prefer


def choose_member(view: ClusterView, need: Need, max_lag: int, target_name: str) -> Chosen:
    if need == "replica":
        replicas = sorted(
            (m for m in view.members if m.is_streaming_replica and not m.noloadbalance
             and m.lag is not None and m.lag <= max_lag),
            key=lambda m: (m.lag or 0, m.name))
        if replicas:
            best = replicas[0]
            return Chosen(need, best.name, best.role, best.host, best.port, best.lag,
                          f"streaming replica, {best.lag} bytes behind")
    leader = view.leader
    if leader is None:
        raise ConnectionFailed(
            f"target '{target_name}': the cluster has no running leader right now "
            f"({_roles(view.members)})",
            hint="a failover may be under way: try again in a minute")
    reason = "leader" if need == "leader" else "leader (no replica streaming within max_lag)"
    return Chosen(need, leader.name, leader.role, leader.host, leader.port, 0, reason)


def _roles(members: list[MemberInfo]) -> str:
    return ", ".join(f"{m.name}: {m.role} {m.state}" for m in members) or "no members"


def fill_template(dsn: str, host: str, port: int) -> str:
    shown_host = f"[{host}]" if ":" in host and dsn.startswith(("postgres://", "postgresql://")) \
        else host
    return dsn.replace("{host}", shown_host).replace("{port}", str(port))


def member_conninfo(binding: ClusterBinding, need: Need) -> str:
    """The connection string for the member this need goes to (asking Patroni once per need
    and command)."""
    if binding.multi_host:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        if conninfo_to_dict(binding.dsn).get("target_session_attrs"):
            return binding.dsn  # the user said which
        attrs = "read-write" if need == "leader" else "prefer-standby"
        binding.chosen.setdefault(need, Chosen(need, None, attrs, reason=f"libpq {attrs}"))
        return make_conninfo(binding.dsn, target_session_attrs=attrs)
    assert binding.patroni is not None
    chosen = binding.chosen.get(need)
    if chosen is None:
        binding.view = fetch_cluster(binding.patroni, binding.target_name)
        chosen = choose_member(binding.view, need, binding.patroni.max_lag, binding.target_name)
        binding.chosen[need] = chosen
        log.info("target '%s': %s for %s work: %s", binding.target_name, chosen.member, need,
                 chosen.reason)
    assert chosen.member is not None and chosen.host is not None and chosen.port is not None
    given = binding.patroni.members.get(chosen.member)
    if given is not None:
        return given
    if not binding.patroni.members or "{host}" in binding.dsn:
        return fill_template(binding.dsn, chosen.host, chosen.port)
    raise ConnectionFailed(f"target '{binding.target_name}': member '{chosen.member}' has no "
                           f"DSN under patroni.members",
                           hint="add it, or give a dsn template with {host}:{port}")


_IDENTITY_SQL = """
SELECT pg_is_in_recovery(),
       (SELECT system_identifier FROM pg_control_system()),
       CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END
"""


def server_identity(conn: psycopg.Connection[Any]) -> ServerIdentity:
    row = conn.execute(_IDENTITY_SQL).fetchone()
    assert row is not None
    return ServerIdentity(in_recovery=bool(row[0]), system_identifier=int(row[1]),
                          timeline=int(row[2]))


def _where(binding: ClusterBinding, need: Need) -> str:
    chosen = binding.chosen.get(need)
    return f"member '{chosen.member}'" if chosen and chosen.member else "the server libpq chose"


def confirm_role(conn: psycopg.Connection[Any], binding: ClusterBinding, need: Need) -> None:
    """On the connection that does the work: a leader need is met only by a server out of
    recovery, of the same system and timeline as when this command first confirmed it."""
    if need != "leader":
        if binding.check_feedback:
            _warn_without_feedback(conn, binding)
        return
    identity = server_identity(conn)
    where = _where(binding, need)
    if identity.in_recovery:
        raise RoleChanged(f"target '{binding.target_name}': {where} is not the leader (it is "
                          "in recovery); nothing was written",
                          hint="the cluster is changing leader: run again once it has one")
    first = binding.identity
    if first is None:
        binding.identity = identity
        return
    if (identity.system_identifier, identity.timeline) != (first.system_identifier,
                                                          first.timeline):
        raise RoleChanged(
            f"target '{binding.target_name}': the leader changed during the run (timeline "
            f"{first.timeline} -> {identity.timeline}); stopped, nothing more was written",
            hint="run again: it continues on the new leader")


# Connections proven to be on a cluster's leader, with their binding: the batch loops and
# maintenance steps re-check through these without their signatures knowing about clusters.
_ON_LEADER: weakref.WeakKeyDictionary[Any, ClusterBinding] = weakref.WeakKeyDictionary()


def confirm_connection(conn: psycopg.Connection[Any], binding: ClusterBinding,
                       kind: str) -> None:
    need = need_for(binding, kind)
    try:
        # Outside any transaction: the caller may still set its isolation level.
        was_autocommit, conn.autocommit = conn.autocommit, True
        confirm_role(conn, binding, need)
        conn.autocommit = was_autocommit
    except BaseException:
        conn.close()
        raise
    if need == "leader":
        _ON_LEADER[conn] = binding


def _warn_without_feedback(conn: psycopg.Connection[Any], binding: ClusterBinding) -> None:
    row = conn.execute("SELECT pg_is_in_recovery(), current_setting('hot_standby_feedback'),"
                       " current_setting('max_standby_streaming_delay')").fetchone()
    if row and row[0] and row[1] == "off":
        binding.check_feedback = False  # once per command
        log.warning("target '%s': %s has hot_standby_feedback off (max_standby_streaming_delay "
                    "%s): a long dump there may be cancelled by a conflict with recovery, and "
                    "is then taken from the leader", binding.target_name,
                    _where(binding, "replica"), row[2])


def recheck(conn: psycopg.Connection[Any]) -> None:
    """Between cleanup batches and maintenance steps: is this connection still on the leader
    it was proven on (same system, same timeline, out of recovery)? RoleChanged if not; a
    no-op for connections that are not to a cluster's leader."""
    binding = _ON_LEADER.get(conn)
    if binding is None:
        return
    if conn.closed or conn.broken:
        raise lost_leader(binding)
    try:
        confirm_role(conn, binding, "leader")
    except RoleChanged:
        raise
    except Exception as exc:
        lost = connection_lost(conn, exc)
        if lost is not None:
            raise lost from None
        raise


def connection_lost(conn: psycopg.Connection[Any], exc: BaseException) -> RoleChanged | None:
    """The RoleChanged to raise instead of `exc` when `exc` is the loss of a connection to a
    cluster's leader (a switchover or failover shuts it down or restarts it as a replica)."""
    binding = _ON_LEADER.get(conn)
    if binding is None:
        return None
    sqlstate = str(getattr(exc, "sqlstate", None) or "")
    if conn.broken or conn.closed or sqlstate.startswith(("08", "57P")) or (
            sqlstate == "25006"):  # read_only_sql_transaction: it is a replica now
        return lost_leader(binding)
    return None


def lost_leader(binding: ClusterBinding) -> RoleChanged:
    return RoleChanged(f"target '{binding.target_name}': lost the connection to the leader "
                       f"({_where(binding, 'leader')}) during the run; stopped, nothing more "
                       "was written",
                       hint="a switchover or failover may be under way: run again once the "
                       "cluster has a leader")
