"""The schedule's calendars: cron, at and every become the same instants for systemd
(OnCalendar=, checked by systemd-analyze) and for the built-in scheduler (APScheduler)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess

import pytest

from aegisctl.config import validate
from aegisctl.errors import ConfigError
from aegisctl.scheduling.calendar import parse_at, parse_cron, parse_every

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                   reason="systemd-analyze is not installed (Debian: systemd)")
BASE = dt.datetime(2026, 1, 30, 22, 17, 0, tzinfo=dt.UTC)  # a Friday near a month's end

CRON_CASES = [
    "0 2 * * *", "30 2 * * *", "*/5 * * * *", "0 3 * * 6", "0 4 * * 0", "0 4 * * 7",
    "0 5 1 * *", "15 9-17 * * 1-5", "0 0 1 * 1", "0 0 */10 * *", "0 */6 * * *",
    "5,35 1,13 * * mon,wed,fri", "0 12 * jan,jul *", "0 0 31 * *", "0 0 29 2 *",
    "10-40/10 8 * * *", "0 22 * * fri-sun", "@weekly", "@monthly", "@hourly", "*/20 9-17 * * 1-5",
    "0 0 13 * 5",
]


def systemd_next(expressions: list[str], count: int) -> list[dt.datetime]:
    """The next `count` elapses of the union of expressions, per systemd-analyze calendar."""
    found: set[dt.datetime] = set()
    for expr in expressions:
        out = subprocess.run(
            [SYSTEMD_ANALYZE, "calendar", f"--iterations={count}",
             f"--base-time={BASE.strftime('%Y-%m-%d %H:%M:%S')} UTC", expr],
            capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"})
        for match in re.finditer(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", out.stdout):
            found.add(dt.datetime.fromisoformat(match[1]).replace(tzinfo=dt.UTC))
    return sorted(found)[:count]


@needs_systemd
@pytest.mark.parametrize("cron", CRON_CASES)
def test_cron_translation_matches_systemd(cron: str) -> None:
    calendar = parse_cron(cron, "UTC")
    ours = calendar.next_runs(BASE, 12)
    assert systemd_next(calendar.on_calendar(), 12) == ours, calendar.on_calendar()


@needs_systemd
@pytest.mark.parametrize("every", [1, 15, 60, 300, 900, 3600, 7200, 6 * 3600, 86400])
def test_every_matches_systemd(every: int) -> None:
    calendar = parse_every(every, "UTC")
    assert systemd_next(calendar.on_calendar(), 8) == calendar.next_runs(BASE, 8)


@needs_systemd
def test_at_with_time_zone_matches_systemd() -> None:
    calendar = parse_at("02:30", "Europe/Berlin")
    assert calendar.on_calendar() == ["*-*-* 02:30:00 Europe/Berlin"]
    assert systemd_next(calendar.on_calendar(), 5) == calendar.next_runs(BASE, 5)


def test_known_translations() -> None:
    assert parse_cron("0 3 * * 6", "UTC").on_calendar() == ["Sat *-*-* 03:00:00 UTC"]
    assert parse_cron("0 5 1 * *", "UTC").on_calendar() == ["*-*-01 05:00:00 UTC"]
    assert parse_cron("15 9-17 * * 1-5", "UTC").on_calendar() == [
        "Mon..Fri *-*-* 09..17:15:00 UTC"]
    # cron runs on the 1st OR on Mondays: two OnCalendar= lines.
    assert parse_cron("0 0 1 * 1", "UTC").on_calendar() == [
        "Mon *-*-* 00:00:00 UTC", "*-*-01 00:00:00 UTC"]
    assert parse_every(300, "UTC").on_calendar() == ["*-*-* *:00/5:00 UTC"]


def test_interval_is_the_longest_gap() -> None:
    assert parse_cron("0 5 1 * *", "UTC").interval(BASE) == 31 * 86400
    assert parse_cron("0 9 * * 1-5", "UTC").interval(BASE) == 3 * 86400
    assert parse_every(300, "UTC").interval(BASE) == 300


@pytest.mark.parametrize(("cron", "fragment"), [
    ("0 2 * *", "5 fields"), ("61 * * * *", "outside 0-59"), ("0 2 * * mon-", "not a number"),
    ("*/0 * * * *", "step"), ("@reboot", "unknown macro"), ("0 25 * * *", "outside 0-23"),
])
def test_bad_cron_is_a_clear_error(cron: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_cron(cron, "UTC")


def _config(job: dict[str, object], **extra: object) -> dict[str, object]:
    return {"targets": {"primary": {"dsn": "postgresql://x@h/db"}}, "schedule": {"j": job},
            **extra}


@pytest.mark.parametrize(("job", "fragment"), [
    ({"command": "health"}, "exactly one of at, cron or every"),
    ({"command": "health", "at": "02:00", "every": "5m"}, "exactly one"),
    ({"command": "health", "every": "7m"}, "does not divide"),
    ({"command": "health", "at": "25:00"}, "not a valid time"),
    ({"command": "health", "at": "02:00", "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"command": "--target replica health", "at": "02:00"}, "global options"),
    ({"command": "aegisctl health", "at": "02:00"}, "leave out the program name"),
    ({"command": "health 'unclosed", "at": "02:00"}, "cannot be split"),
    ({"command": "health", "at": "02:00", "target": "nope"}, "unknown target 'nope'"),
    ({"command": "health", "at": "02:00", "success_exit_codes": [300]}, "0..255"),
])
def test_config_rejects_bad_jobs(job: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        validate(_config(job), "cfg.yaml")
    assert "schedule.j" in str(info.value)


@pytest.mark.parametrize("command", [
    "backup prune", "backup restore --latest --force", "cleanup run",
    "maint vacuum --full", "memory reembed", "backup physical prune",
    "backup physical disable", "backup physical enable --restart", "local stop"])
def test_destructive_commands_need_yes_in_a_schedule(command: str) -> None:
    """Derived from the commands' own marks: every command that would ask needs --yes."""
    from aegisctl.cli.command_tree import check_schedule_commands

    settings = validate(_config({"command": command, "at": "02:00"}), "cfg.yaml")
    with pytest.raises(ConfigError, match=r"is destructive.*add --yes") as info:
        check_schedule_commands(settings, "cfg.yaml")
    assert "schedule.j" in str(info.value)


def test_destructive_commands_with_yes_or_dry_run_are_accepted() -> None:
    from aegisctl.cli.command_tree import check_schedule_commands

    for command in ("backup prune --yes", "cleanup run -y", "maint vacuum --analyze",
                    "cleanup run --dry-run", "maint vacuum --full --yes",
                    "memory reembed --missing", "memory reembed --stale",
                    "backup physical enable", "backup physical prune --dry-run"):
        settings = validate(_config({"command": command, "at": "02:00"}), "cfg.yaml")
        assert settings.schedule["j"].command == command
        check_schedule_commands(settings, "cfg.yaml")


def test_bad_job_name_is_refused() -> None:
    config = _config({"command": "health", "at": "02:00"})
    config["schedule"] = {"Bad Name": {"command": "health", "at": "02:00"}}
    with pytest.raises(ConfigError, match="job name"):
        validate(config, "cfg.yaml")


def test_commands_are_checked_against_the_command_tree() -> None:
    from aegisctl.cli.command_tree import check_command

    check_command(["health"])
    check_command(["backup", "create"])
    check_command(["schema", "status"])
    check_command(["backup", "verify", "--latest", "--restore-test"])
    for argv, fragment in ((["backup"], "is a group"), (["nosuch"], "no command 'nosuch'"),
                           (["backup", "create", "--nope"], "No such option"),
                           (["health", "extra"], "unexpected extra argument")):
        with pytest.raises(ValueError, match=re.escape(fragment)):
            check_command(argv)


def test_config_validate_checks_scheduled_commands(cli, write_config) -> None:
    path = write_config({"schedule": {"typo": {"command": "backup craete", "at": "02:00"}}})
    result = cli("config", "validate", str(path))
    assert result.exit_code == 2
    assert "schedule.typo.command" in result.stderr and "no command 'craete'" in result.stderr
    path = write_config({"schedule": {"prune": {"command": "backup prune", "at": "02:00"}}})
    result = cli("config", "validate", str(path))
    assert result.exit_code == 2 and "add --yes" in result.stderr


def test_destructive_rule_never_demands_a_flag_the_command_lacks() -> None:
    """Every command marked as asking has the --yes a schedule must give."""
    import typer

    from aegisctl.cli.main import LAZY_GROUPS, app
    from aegisctl.cli.options import ASKS_ATTR

    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    marked = []

    def walk(command: object, path: list[str]) -> None:
        subs = {n: command.get_command(ctx, n) for n in command.list_commands(ctx)} \
            if hasattr(command, "list_commands") else {}
        for name, sub in (subs or {}).items():
            walk(sub, [*path, name])
        if getattr(getattr(command, "callback", None), ASKS_ATTR, None) is not None:
            marked.append(path)
            assert any("--yes" in p.opts for p in command.params), path  # type: ignore[attr-defined]

    walk(root, [])
    assert ["backup", "physical", "prune"] in marked and ["cleanup", "run"] in marked
    assert len(LAZY_GROUPS) > 0
