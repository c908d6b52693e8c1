"""The guard against a policy that would delete every row of its table.

A policy whose cutoff lies after the newest row (a max_age of `1d` on a table last written a
week ago, or the wrong column) is far more often a mistake than an intent, and it would
quietly empty a table. A real run refuses it before anything is deleted (exit 2) unless
`--allow-emptying` says it is meant; a dry run shows it as a warning.

The probes stop at the first surviving row: a row at or after the cutoff (walks the age
index when there is one, and prunes partitions), a row whose age is NULL (never deleted), and
only when neither exists, the slower one: an exempt row (keep, keep_referenced_by).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from aegisctl.errors import UsageError

if TYPE_CHECKING:
    import psycopg

    from aegisctl.retention.policy import ResolvedPolicy

FLAG = "--allow-emptying"


def would_empty(conn: psycopg.Connection[Any], policy: ResolvedPolicy,
                cutoff: dt.datetime) -> bool:
    """True when the table has rows and the policy would delete every one of them."""
    from psycopg import sql

    rel, col = policy.table.ident(), sql.Identifier(policy.column)
    probes = [
        (sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {} AS t)").format(rel), {}),
        (sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE t.{} >= %(cutoff)s)")
         .format(rel, col), {"cutoff": cutoff}),
        (sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE t.{} IS NULL)").format(rel, col),
         {}),
    ]
    where, params = policy.condition("t", cutoff)
    probes.append((sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE NOT ({}))")
                   .format(rel, where), params))
    for query, args in probes:  # each: "some row survives (or there is none)"
        row = conn.execute(query, args).fetchone()
        if row is not None and row[0] is True:
            return False
    return True


def warning(policy: ResolvedPolicy) -> str:
    return (f"policy {policy.name} would delete every row of {policy.table.qualified} (no "
            f"row is newer than {policy.age}, none is exempt): check its max_age and column")


def refusal(warnings: list[str]) -> UsageError:
    """The one-line error of a real run that would empty a table."""
    return UsageError("; ".join(warnings) + f"; nothing was deleted: pass {FLAG} if emptying "
                      "is intended")
