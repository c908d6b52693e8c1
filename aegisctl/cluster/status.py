"""`aegisctl cluster status`: the members as Patroni sees them, and the member aegisctl would
use right now for writes and for reads (each confirmed on a connection)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aegisctl.cluster.members import ClusterBinding, Need, server_identity
from aegisctl.cluster.patroni import ClusterView, MemberInfo
from aegisctl.errors import AegisError, UsageError

if TYPE_CHECKING:
    from aegisctl.config import LoadedConfig
    from aegisctl.output import Block
    from aegisctl.targets import Target


@dataclass
class Use:
    """Where one kind of work would go now."""

    need: Need
    member: str | None
    server: str | None  # host:port of the connection
    in_recovery: bool | None
    timeline: int | None
    reason: str
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"member": self.member, "server": self.server, "in_recovery": self.in_recovery,
                "timeline": self.timeline, "reason": self.reason, "error": self.error}


@dataclass
class ClusterStatus:
    target: str
    kind: str  # patroni | multi-host
    scope: str | None = None
    source: str | None = None  # the REST API that answered
    paused: bool = False
    scheduled_switchover: str | None = None
    members: list[MemberInfo] = field(default_factory=list)
    writes: Use | None = None
    reads: Use | None = None

    @property
    def leader(self) -> str | None:
        return next((m.name for m in self.members if m.is_leader and m.state == "running"),
                    None)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "kind": self.kind, "scope": self.scope,
                "source": self.source, "leader": self.leader, "paused": self.paused,
                "scheduled_switchover": self.scheduled_switchover,
                "members": [m.to_json() for m in self.members],
                "writes": self.writes.to_json() if self.writes else None,
                "reads": self.reads.to_json() if self.reads else None}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Fields, Table

        blocks: list[Block] = [Fields([
            ("target", f"{self.target} ({self.kind})"),
            ("scope", self.scope), ("leader", self.leader or "NONE"),
            ("paused", "yes (no automatic failover)" if self.paused else "no"),
            ("scheduled switchover", self.scheduled_switchover or "none"),
        ], title="cluster")]
        if self.members:
            blocks.append(Table(
                [Column("member", "id"), "role", "state", "host:port",
                 Column("timeline", "number"), Column("lag (bytes)", "number"),
                 "pending restart"],
                [[m.name, m.role, m.state, f"{m.host}:{m.port}", m.timeline,
                  "-" if m.lag is None else m.lag, "yes" if m.pending_restart else ""]
                 for m in self.members], title="members"))
        rows = []
        for label, use in (("writes", self.writes), ("reads", self.reads)):
            if use is None:
                continue
            where = use.error or f"{use.member or use.server} ({use.reason})"
            rows.append((label, where))
        blocks.append(Fields(rows, title="aegisctl would use"))
        return blocks


def _probe(loaded: LoadedConfig, target: Target, binding: ClusterBinding, need: Need) -> Use:
    from aegisctl.db import connect

    binding.prefer = need
    try:
        with connect(loaded, target, f"cluster status ({need})") as conn:
            identity = server_identity(conn)
            info = conn.info
            server = f"{info.host}:{info.port}"
    except AegisError as exc:
        return Use(need, None, None, None, None, "", error=exc.message)
    chosen = binding.chosen.get(need)
    return Use(need, chosen.member if chosen else None, server, identity.in_recovery,
               identity.timeline, chosen.reason if chosen else "")


def cluster_status(loaded: LoadedConfig, target: Target) -> ClusterStatus:
    binding = target.cluster
    if binding is None:
        raise UsageError(f"target '{target.name}' is a single server, not a cluster",
                         hint=f"give targets.{target.name}.patroni.urls, or a multi-host dsn")
    status = ClusterStatus(target=target.name, kind="multi-host" if binding.multi_host
                           else "patroni")
    if binding.patroni is not None:
        from aegisctl.cluster.patroni import fetch_cluster

        view: ClusterView = fetch_cluster(binding.patroni, target.name)
        status.scope, status.source = view.scope, view.source
        status.paused, status.scheduled_switchover = view.paused, view.scheduled_switchover
        status.members = view.members
    status.writes = _probe(loaded, target, binding, "leader")
    status.reads = _probe(loaded, target, binding, "replica")
    return status
