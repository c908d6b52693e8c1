"""Logical dumps from a cluster's replica (`backup.source: replica`), aware of recovery
conflicts.

On a hot standby, WAL replay wins over queries: a dump whose snapshot still needs rows the
leader has vacuumed away (or whose table locks meet a replayed DROP/TRUNCATE) is cancelled
"due to conflict with recovery" once `max_standby_streaming_delay` has passed. With
`hot_standby_feedback` on, the leader keeps those rows; without it, a long dump is at risk,
and aegisctl says so before dumping. A dump cancelled that way is taken again from the leader
(once), with one line saying why; anything else fails as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from aegisctl.cluster.patroni import REPLICA_ROLES

if TYPE_CHECKING:
    from aegisctl.targets import Target

log = logging.getLogger(__name__)
T = TypeVar("T")

CONFLICT_MARKER = "conflict with recovery"


def dump_with_fallback(target: Target, create: Callable[[], T]) -> T:
    """Run `create` (a dump of `target`); when it ran on a replica and was cancelled by a
    recovery conflict, run it again on the leader. Whatever follows the dump (verification,
    restore tests) goes to the leader."""
    binding = target.cluster
    if binding is None or binding.prefer != "replica":
        return create()
    binding.check_feedback = True
    try:
        return create()
    except Exception as exc:
        chosen = binding.chosen.get("replica")
        on_replica = chosen is not None and (chosen.role in REPLICA_ROLES or
                                             (chosen.member is None and binding.multi_host))
        if CONFLICT_MARKER not in str(exc) or not on_replica:
            raise
        where = f"replica '{chosen.member}'" if chosen and chosen.member else "the standby"
        log.warning("target '%s': the dump on %s was cancelled by a conflict with recovery "
                    "(turn hot_standby_feedback on there, or raise max_standby_streaming_delay); "
                    "dumping from the leader instead", target.name, where)
        binding.prefer = "leader"
        return create()
    finally:
        binding.prefer = "leader"
        binding.check_feedback = False
