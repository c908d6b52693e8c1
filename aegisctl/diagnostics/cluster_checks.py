"""`aegisctl check` on a Patroni cluster target: the cluster as its REST API reports it.

Leader present, automatic failover paused, members waiting for a restart, a switchover
scheduled, the timeline changed since the previous check run (a failover or switchover
happened), and each replica's state and lag in bytes (one result per member: `member` label
in the Prometheus output, one perfdata item per member in the Nagios output). They need no
database connection: they still answer while the leader is down.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from aegisctl.cluster.patroni import ClusterView, fetch_cluster
from aegisctl.diagnostics.checks import (
    CheckContext,
    CheckResult,
    CheckSkipped,
    Status,
    grade,
    register_check,
)
from aegisctl.units import format_bytes


def _view(ctx: CheckContext) -> ClusterView:
    binding = ctx.target.cluster
    if binding is None or binding.patroni is None:
        raise CheckSkipped("not a Patroni cluster target")
    if "cluster_view" not in ctx.memo:
        ctx.memo["cluster_view"] = fetch_cluster(binding.patroni, ctx.target.name)
    view: ClusterView = ctx.memo["cluster_view"]
    return view


@register_check("cluster_leader", "a Patroni cluster has a running leader", needs_db=False)
def cluster_leader(ctx: CheckContext) -> CheckResult:
    view = _view(ctx)
    leader = view.leader
    if leader is None:
        states = ", ".join(f"{m.name} {m.role} {m.state}" for m in view.members) or "no members"
        return CheckResult("cluster_leader", Status.CRITICAL, 0, None, None, "",
                           f"no running leader ({states})", 0)
    return CheckResult("cluster_leader", Status.OK, 1, None, None, "",
                       f"leader {leader.name} on timeline {leader.timeline}", 0, 1)


@register_check("cluster_paused", "automatic failover of a Patroni cluster is not paused",
                needs_db=False)
def cluster_paused(ctx: CheckContext) -> CheckResult:
    view = _view(ctx)
    if view.paused:
        return CheckResult("cluster_paused", Status.WARNING, 1, None, None, "",
                           "paused: no automatic failover (patronictl resume)", 0, 1)
    return CheckResult("cluster_paused", Status.OK, 0, None, None, "", "not paused", 0, 1)


@register_check("cluster_pending_restart", "Patroni members waiting for a restart to apply "
                "changed settings", needs_db=False)
def cluster_pending_restart(ctx: CheckContext) -> CheckResult:
    pending = [m.name for m in _view(ctx).members if m.pending_restart]
    if pending:
        return CheckResult("cluster_pending_restart", Status.WARNING, len(pending), None, None,
                           "", f"pending restart: {', '.join(pending)} (patronictl restart)",
                           0)
    return CheckResult("cluster_pending_restart", Status.OK, 0, None, None, "",
                       "no member waits for a restart", 0)


@register_check("cluster_switchover", "no switchover scheduled on a Patroni cluster",
                needs_db=False)
def cluster_switchover(ctx: CheckContext) -> CheckResult:
    when = _view(ctx).scheduled_switchover
    if when:
        return CheckResult("cluster_switchover", Status.WARNING, 1, None, None, "",
                           f"switchover scheduled at {when}", 0, 1)
    return CheckResult("cluster_switchover", Status.OK, 0, None, None, "",
                       "no switchover scheduled", 0, 1)


def _timeline_file(ctx: CheckContext) -> Path:
    from aegisctl import paths

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", ctx.target.name)
    return paths.state_dir(ctx.loaded.settings) / f"cluster-{safe}.json"


def _read_timeline(path: Path) -> tuple[int | None, str | None]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    timeline, leader = data.get("timeline"), data.get("leader")
    return (timeline if isinstance(timeline, int) and not isinstance(timeline, bool) else None,
            leader if isinstance(leader, str) else None)


def _write_timeline(path: Path, timeline: int, leader: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.write_text(json.dumps({"timeline": timeline, "leader": leader}) + "\n")
    temporary.replace(path)


@register_check("cluster_timeline", "a Patroni cluster's timeline has not changed since the "
                "previous check run (a failover or switchover)", needs_db=False)
def cluster_timeline(ctx: CheckContext) -> CheckResult:
    leader = _view(ctx).leader
    if leader is None or leader.timeline is None:
        raise CheckSkipped("no leader to read the timeline from")
    path = _timeline_file(ctx)
    before, previous_leader = _read_timeline(path)
    try:
        _write_timeline(path, leader.timeline, leader.name)
    except OSError as exc:
        return CheckResult("cluster_timeline", Status.UNKNOWN, leader.timeline, None, None, "",
                           f"cannot remember the timeline in {path}: {exc.strerror}")
    if before is not None and before != leader.timeline:
        moved = f" (leader {previous_leader} -> {leader.name})" \
            if previous_leader and previous_leader != leader.name else ""
        return CheckResult("cluster_timeline", Status.WARNING, leader.timeline, None, None, "",
                           f"timeline {before} -> {leader.timeline} since the previous check: "
                           f"a failover or switchover happened{moved}")
    return CheckResult("cluster_timeline", Status.OK, leader.timeline, None, None, "",
                       f"timeline {leader.timeline}" +
                       (" (first check: remembered)" if before is None else " (unchanged)"))


@register_check("cluster_lag", "each Patroni replica streams, and how far behind the leader "
                "it is (bytes)", needs_db=False)
def cluster_lag(ctx: CheckContext) -> list[CheckResult]:
    view = _view(ctx)
    t = ctx.settings.cluster_lag_bytes
    results = []
    for member in view.members:
        if member.is_leader:
            continue
        name = f"cluster_lag:{member.name}"
        if member.state not in ("streaming", "running"):
            result = CheckResult(name, Status.CRITICAL, member.lag, t.warning, t.critical, "B",
                                 f"{member.name} is {member.role}, {member.state}", 0)
        elif member.lag is None:
            result = CheckResult(name, Status.UNKNOWN, None, t.warning, t.critical, "B",
                                 f"{member.name}: lag unknown ({member.state})")
        else:
            result = grade(name, member.lag, t.warning, t.critical, unit="B", minimum=0,
                           message=f"{member.name} {member.state}, {format_bytes(member.lag)} "
                           "behind the leader")
        result.labels = {"member": member.name}
        results.append(result)
    if not results:
        raise CheckSkipped("the cluster has no replica")
    return results
