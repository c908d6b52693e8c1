"""Scheduled commands checked against the live command tree: the command exists, it is a
command (not a group), and its options and arguments parse. Done at validation time, so a
schedule naming a command added by another package version is judged by what is installed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from aegisctl.errors import ConfigError

if TYPE_CHECKING:
    from aegisctl.config import Settings


def _resolve(argv: list[str]) -> tuple[Any, Any, list[str], list[str]]:
    """(command, its context, its path, the remaining words) for an argv; ValueError when no
    command is named."""
    from aegisctl.cli.main import app

    command: Any = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="aegisctl")
    path: list[str] = []
    rest = list(argv)
    while hasattr(command, "list_commands"):
        if not rest:
            names = ", ".join(command.list_commands(ctx))
            raise ValueError(f"'{' '.join(path)}' is a group of commands; name one of: {names}")
        name = rest[0]
        sub = command.get_command(ctx, name)
        if sub is None:
            where = f"'{' '.join(path)}'" if path else "aegisctl"
            raise ValueError(f"{where} has no command '{name}'")
        path.append(name)
        rest = rest[1:]
        command = sub
        ctx = typer.Context(command, info_name=name, parent=ctx)
    return command, ctx, path, rest


def takes_target_lock(argv: list[str]) -> bool:
    """Whether the command takes the per-target lock: it has the shared --wait-lock option."""
    from aegisctl.cli.options import WAIT_LOCK_HELP

    command = _resolve(argv)[0]
    return any(getattr(p, "help", None) == WAIT_LOCK_HELP for p in command.params)


def check_command(argv: list[str]) -> None:
    """Raises ValueError saying what is wrong with `argv` as an aegisctl command line."""
    command, ctx, path, rest = _resolve(argv)
    if "--help" in rest or "-h" in rest:
        raise ValueError("--help does nothing useful in a schedule")
    try:
        command.make_context(" ".join(path), rest, parent=ctx, resilient_parsing=False)
    except typer.TyperException as exc:  # click's UsageError and its kin
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise ValueError(f"'{' '.join(path)}': {message}") from None
    except typer.Exit:
        pass


def asks_unattended(argv: list[str]) -> str | None:
    """The command path when `argv` would ask a question (destroy data, disconnect sessions)
    because it lacks --yes, else None. Derived from the commands' own @asks marks."""
    from aegisctl.cli.options import ASKS_ATTR

    command, ctx, path, rest = _resolve(argv)
    when = getattr(command.callback, ASKS_ATTR, None)
    if when is None:
        return None
    sub = command.make_context(" ".join(path), list(rest), parent=ctx, resilient_parsing=True)
    if sub.params.get("yes") or not when(dict(sub.params)):
        return None
    return " ".join(path)


def check_schedule_commands(settings: Settings, origin: str, only: str | None = None) -> None:
    """Every job's command (or the job `only`) parses as an aegisctl command, and a
    destructive one states its intent with --yes (ConfigError naming the job if not)."""
    from aegisctl.scheduling.jobs import split_command

    for name, job in settings.schedule.items():
        if only is not None and name != only:
            continue
        try:
            argv = split_command(job.command)
            check_command(argv)
            destructive = asks_unattended(argv)
        except ValueError as exc:
            raise ConfigError(f"{origin}: schedule.{name}.command {job.command!r}: {exc}") from None
        if destructive:
            raise ConfigError(f"{origin}: schedule.{name}.command {job.command!r}: "
                              f"'{destructive}' is destructive and an unattended run cannot be "
                              "asked: add --yes to state the intent")


def schedule_warnings(settings: Settings) -> list[str]:
    """What a valid schedule still does wrong: jobs sharing a target's lock that fire at the
    same moment (the later one waits up to scheduler.lock_wait, then is skipped)."""
    from aegisctl.scheduling.jobs import lock_collisions, scheduled_jobs

    return lock_collisions(settings, [j for j in scheduled_jobs(settings)
                                      if takes_target_lock(j.argv)])
