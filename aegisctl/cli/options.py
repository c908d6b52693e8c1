"""The options commands share, defined once: --yes, --dry-run, --wait-lock, --limit, durations
and the memory filter block.

Short options keep one meaning across all commands: `-y` is --yes, `-n` is --limit (as in
`head -n`), `-j` is --jobs (parallel workers, as in `pg_dump -j`), `-f` is --format, `-k` is
--kind. --job and --next have no short form.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from aegisctl.memory.filters import Filters

# -- confirmation and dry runs --------------------------------------------------------------------

YES_HELP = "Do not ask (needed when not on a terminal, e.g. under a timer)."
DRY_RUN_HELP = "Say what would change; change nothing."


def yes_option(help: str = YES_HELP) -> Any:
    return typer.Option("--yes", "-y", help=help)


def dry_run_option(help: str = DRY_RUN_HELP) -> Any:
    return typer.Option("--dry-run", help=help)


Yes = Annotated[bool, yes_option()]
DryRun = Annotated[bool, dry_run_option()]

# A command that destroys data or disconnects sessions says so with @asks(when): `when` gets
# the parsed parameters and tells whether this invocation asks (unless --yes). The schedule's
# rule "an unattended destructive command must pass --yes" is derived from these marks
# (cli.command_tree), so a new destructive command cannot be forgotten in a list elsewhere.
ASKS_ATTR = "__aegisctl_asks__"
F = TypeVar("F", bound=Callable[..., Any])


def asks(when: Callable[[dict[str, Any]], bool]) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        setattr(fn, ASKS_ATTR, when)
        return fn
    return mark


def unless_dry_run(params: dict[str, Any]) -> bool:
    return not params.get("dry_run")

# -- the target lock ------------------------------------------------------------------------------

# Every command that changes the database or its backups shares one lock per target; a command
# takes that lock exactly when it has this option (the schedule's checks rely on it).
WAIT_LOCK_HELP = ("Wait this long for another backup, verify, prune, restore, cleanup or "
                  "maintenance run of the target (they share one lock), then exit 4.")
WaitLock = Annotated[float, typer.Option("--wait-lock", metavar="SECONDS", min=0,
                                         help=WAIT_LOCK_HELP)]

# -- lists ----------------------------------------------------------------------------------------


def limit_option(help: str, *, max: int | None = None) -> Any:
    return typer.Option("--limit", "-n", min=1, max=max, help=help)


# -- durations ------------------------------------------------------------------------------------


def duration_seconds(value: str | None) -> float | None:
    """A --since/--timeout style value with units (90s, 15m, 2h, 14d, 6mo, 1y) -> seconds; a
    bad or overflowing one is a usage error (exit 2) naming the accepted forms."""
    from aegisctl.units import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def duration_option(*names: str, help: str, metavar: str = "DURATION") -> Any:
    return typer.Option(*names, help=help, metavar=metavar, parser=duration_seconds)


# -- the memory filter block (search, list, export, reembed, forget) --------------------------------


class KindChoice(StrEnum):
    episodic = "episodic"
    semantic = "semantic"
    all = "all"


class Importance(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


KindOpt = Annotated[KindChoice, typer.Option("--kind", "-k", help="Which memory table(s).")]
TypeOpt = Annotated[list[str] | None, typer.Option(
    "--type", help="Episodic event type (repeatable: any of them).")]
TagOpt = Annotated[list[str] | None, typer.Option(
    "--tag", help="Tag the memory must carry (repeatable: all of them).")]
MinImportanceOpt = Annotated[Importance | None, typer.Option(
    "--min-importance", help="Episodic importance at least this.")]
CategoryOpt = Annotated[list[str] | None, typer.Option(
    "--category", help="Semantic category (repeatable: any of them).")]
SinceOpt = Annotated[str | None, typer.Option(
    "--since", help="Newer than a duration ago (7d, 12h) or a date (2025-01-31).")]
UntilOpt = Annotated[str | None, typer.Option(
    "--until", help="Older than a duration ago or a date.")]
BeforeOpt = Annotated[str | None, typer.Option(
    "--before", help="Older than a duration ago or a date (the same as --until).")]
SourceOpt = Annotated[list[str] | None, typer.Option(
    "--source", help="Semantic memory source (repeatable: any of them).")]
ContextOpt = Annotated[list[str] | None, typer.Option(
    "--context", metavar="KEY=VALUE", help="Episodic context key with this value, e.g. "
    "agent=planner (repeatable: all of them).")]


def memory_filters(kind: KindChoice, types: list[str] | None, tags: list[str] | None,
                   min_importance: Importance | None, categories: list[str] | None,
                   since: str | None, until: str | None, *,
                   sources: list[str] | None = None, context: list[str] | None = None,
                   before: str | None = None) -> Filters:
    """The filter block's options as the core's Filters."""
    from aegisctl.errors import UsageError
    from aegisctl.memory.filters import Filters, parse_context, parse_when

    if before is not None:
        if until is not None and until != before:
            raise UsageError("--before and --until say the same thing: give one of them")
        until = before
    return Filters(
        kind=kinds(kind)[0] if kind is not KindChoice.all else None,
        event_types=list(types or []), tags=list(tags or []),
        min_importance=min_importance.value if min_importance else None,
        categories=list(categories or []),
        since=parse_when(since) if since else None,
        until=parse_when(until) if until else None,
        sources=list(sources or []), context=parse_context(list(context or [])),
    )


def kinds(kind: KindChoice) -> list[Any]:
    return [k for k in ("episodic", "semantic") if kind.value in (k, "all")]
