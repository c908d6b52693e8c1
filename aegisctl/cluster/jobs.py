"""Leader-only scheduled jobs: the same timers (or `schedule run`) on every member of a
Patroni cluster, and a run goes ahead only on the host whose member leads right now.

`patroni.local_url` names this host's own member. A run on a replica, in a paused cluster (no
automatic failover: an operator is at work) or with a switchover scheduled is recorded as
skipped with the reason, never as failed; the leader's runs land in the job history on the
leader, so `check`'s freshness sees runs from whichever member led at the time."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aegisctl.cluster.patroni import fetch_cluster, fetch_local_member
from aegisctl.errors import ConnectionFailed

if TYPE_CHECKING:
    from aegisctl.targets import Target

log = logging.getLogger(__name__)


def not_leader_reason(target: Target) -> str | None:
    """Why a scheduled run must not start on this host now, or None to run it. Only for
    cluster targets with patroni.local_url; every other target always runs."""
    binding = target.cluster
    if binding is None or binding.patroni is None or binding.patroni.local_url is None:
        return None
    try:
        local = fetch_local_member(binding.patroni, target.name)
        view = fetch_cluster(binding.patroni, target.name)
    except ConnectionFailed as exc:
        # Without an answer this host cannot know it leads; the leader's host runs the job
        # (and `check` flags the job as stale if no host can).
        return f"not leader: cannot tell whether this host's member leads ({exc.message})"
    leader = view.leader
    if not local.is_leader:
        member = view.member(local.name)
        role = member.role if member else "not in the cluster"
        return (f"not leader: this host's member {local.name} is {role}"
                f" (leader: {leader.name if leader else 'none'})")
    if view.paused or local.paused:
        return "cluster paused: no job runs until `patronictl resume`"
    if view.scheduled_switchover:
        return f"switchover scheduled ({view.scheduled_switchover}): this run is skipped"
    return None
