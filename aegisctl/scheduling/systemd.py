"""systemd units rendered from the schedule: for each job a hardened oneshot service that runs
`aegisctl jobs run JOB --trigger timer`, and a timer with its calendar.

Hardening: a dedicated user, secrets from an EnvironmentFile (read by systemd as root, so it can
stay root-only), NoNewPrivileges, ProtectSystem=strict with ReadWritePaths= for exactly the
folders the job's command writes (job_writes), PrivateTmp, no capabilities. KillMode=mixed: on
stop, SIGTERM goes to the runner alone, which interrupts the command (SIGINT to its process
group), records the run as interrupted and exits; whatever is left is killed after
TimeoutStopSec.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegisctl.errors import ConfigError, OperationFailed
from aegisctl.scheduling.jobs import Job, scheduled_jobs

if TYPE_CHECKING:
    from aegisctl.config import Settings
    from aegisctl.output import Block

UNIT_PREFIX = "aegisctl-"
DEFAULT_STATE_DIR = "/var/lib/aegisctl"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class UnitFile:
    name: str
    content: str
    state: str = "rendered"  # rendered | new | changed | unchanged | stale
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "path": self.path,
                "content": self.content}


@dataclass
class UnitsResult:
    units: list[UnitFile]
    directory: str | None = None
    dry_run: bool = False
    commands: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"directory": self.directory, "dry_run": self.dry_run,
                "units": [u.to_json() for u in self.units], "stale": self.stale,
                "commands": self.commands}

    def to_view(self) -> list[Block]:
        from aegisctl.output import Column, Note, Table

        verb = "would write" if self.dry_run else "wrote"
        blocks: list[Block] = [Table(
            [Column("unit", "id"), Column("state"), Column("path", "id")],
            [(u.name, u.state, u.path or "-") for u in self.units],
            title=f"{verb} units in {self.directory}" if self.directory else "units")]
        if self.stale:
            blocks.append(Note("not in the schedule any more (left in place): "
                               + ", ".join(self.stale)))
        if self.commands:
            blocks.append(Note("then, as root:"))
            blocks += [Note(f"  {c}") for c in self.commands]
        return blocks


def _text(value: str) -> str:
    """A value safe on one unit-file line: no control characters, % escaped."""
    return _UNSAFE.sub(" ", value).replace("%", "%%")


def _seconds(value: float) -> str:
    return f"{int(value)}s" if value == int(value) else f"{value:g}s"


def _plain_path(path: str, key: str) -> str:
    """A path that can stand unquoted on an ExecStart= line."""
    if not path.startswith("/") or re.search(r"[\s\"'%$\\;]", path) or _UNSAFE.search(path):
        raise ConfigError(f"{path!r} cannot go on an ExecStart= line unquoted (spaces, quotes, "
                          f"%, $): set scheduler.systemd.{key} to a plain absolute path")
    return path


def executable_path(settings: Settings) -> str:
    configured = settings.scheduler.systemd.executable
    if configured:
        return configured
    beside = Path(sys.executable).parent / "aegisctl"
    found = beside if beside.exists() else Path(sys.argv[0]).resolve()
    return _plain_path(str(found), "executable")


def config_path(settings: Settings, loaded_path: Path | None) -> str:
    configured = settings.scheduler.systemd.config_path
    if configured:
        return configured
    if loaded_path is None:
        raise ConfigError("the units need a config file to pass with --config: render from a "
                          "config file, or set scheduler.systemd.config_path")
    return _plain_path(str(loaded_path.resolve()), "config_path")


def _required(value: str | None, key: str, what: str) -> str:
    if not value:
        raise ConfigError(f"set {key}: the units run as a dedicated user and must be told "
                          f"which folder to make writable for {what}")
    return value


def _is_physical(argv: list[str]) -> bool:
    return (len(argv) > 1 and argv[1] in ("physical", "wal", "drill")) \
        or "--physical" in argv or "--incremental" in argv


def job_writes(settings: Settings, job: Job) -> list[str]:
    """The folders a job's command writes, so its unit can make exactly those writable: the
    state folder (job history and the target's lock) always; the backup folder (and audit log)
    for logical backups; Barman's home for physical ones; the archive folder for cleanup; the
    embedded server's folder when the job runs against it; scheduler.systemd.read_write_paths."""
    argv = job.argv
    paths = [settings.scheduler.state_dir or DEFAULT_STATE_DIR]
    if argv[0] == "backup" and _is_physical(argv):
        paths.append(_required(settings.backup.physical.directory,
                               "backup.physical.directory", "physical backups"))
    elif argv[0] == "backup":
        paths.append(_required(settings.backup.directory, "backup.directory", "backups"))
        if settings.backup.audit_log:
            paths.append(str(Path(settings.backup.audit_log).parent))
    if argv[0] == "cleanup":
        archives = any(policy.archive for policy in settings.cleanup.policies.values())
        if archives or settings.cleanup.archive_dir:
            paths.append(settings.cleanup.archive_dir or _required(
                settings.backup.directory, "cleanup.archive_dir (or backup.directory)",
                "cleanup's archives"))
    if _runs_embedded(settings, job):
        from aegisctl.paths import data_dir

        # The data directory's parent holds the server's start lock, sockets and runtime.
        paths.append(str(data_dir(settings.embedded.data_dir).absolute().parent))
    return paths + list(settings.scheduler.systemd.read_write_paths)


def _runs_embedded(settings: Settings, job: Job) -> bool:
    name = job.settings.target or settings.default_target
    if name is not None:
        return name == "embedded" and "embedded" not in settings.targets
    return not settings.targets


def read_write_paths(settings: Settings, jobs: list[Job]) -> list[str]:
    """Every folder any of `jobs` writes (what `systemd install` creates), each once."""
    unique: list[str] = []
    for job in jobs:
        for path in job_writes(settings, job):
            if not path.startswith("/") or re.search(r"[\s\"'%$\\;]", path) \
                    or _UNSAFE.search(path):
                raise ConfigError(f"the units need plain absolute paths (no spaces, quotes, % "
                                  f"or $), got {path!r}")
            if path not in unique:
                unique.append(path)
    return unique


def unit_environment(settings: Settings) -> list[str]:
    """The Environment= lines every unit gets: the state folder, and the embedded server's
    data directory in use (--data-dir, AEGISCTL_DATA_DIR or embedded.data_dir)."""
    lines = [f"Environment=AEGISCTL_STATE_DIR={settings.scheduler.state_dir or DEFAULT_STATE_DIR}"]
    if settings.embedded.data_dir:
        lines.append("Environment=AEGISCTL_DATA_DIR="
                     + _plain_path(str(Path(settings.embedded.data_dir).expanduser().absolute()),
                                   "embedded.data_dir"))
    return lines


def render_units(settings: Settings, loaded_path: Path | None = None) -> list[UnitFile]:
    jobs = scheduled_jobs(settings)
    if not jobs:
        raise ConfigError("the schedule is empty: add jobs under schedule: in the config")
    sd = settings.scheduler.systemd
    exe, config = executable_path(settings), config_path(settings, loaded_path)
    read_write_paths(settings, jobs)  # every path checked once, before any unit is rendered
    environment = unit_environment(settings)
    header = (f"# Rendered by `aegisctl systemd render` from the schedule in {config}.\n"
              "# Edit the schedule there and render again; do not edit this file.\n")
    units: list[UnitFile] = []
    for job in sorted(jobs, key=lambda j: j.name):
        rw = read_write_paths(settings, [job])
        protect_home = "read-only" if any(p.startswith(("/home", "/root", "/run/user"))
                                          for p in rw) else "yes"
        interval = job.calendar.interval()
        what = _text(job.settings.description or job.settings.command)
        success = [c for c in job.settings.success_exit_codes if c != 0]
        timeout = job.settings.timeout
        service = [
            header, "[Unit]",
            f"Description=aegisctl job {job.name}: {what}",
            "After=network-online.target postgresql.service",
            "Wants=network-online.target", "",
            "[Service]", "Type=oneshot",
            f"User={sd.user}", f"Group={sd.group}",
            f"EnvironmentFile=-{sd.environment_file}",
            *environment,
            f"ExecStart={exe} --config {config} --log-format {sd.log_format} "
            f"jobs run {job.name} --trigger timer",
        ]
        if success:
            service.append("SuccessExitStatus=" + " ".join(str(c) for c in success))
        service += [
            # The runner enforces the job's timeout; systemd's is a backstop behind it.
            "TimeoutStartSec=" + (_seconds(timeout + settings.scheduler.kill_timeout + 60)
                                  if timeout else "infinity"),
            "KillMode=mixed",
            f"TimeoutStopSec={_seconds(settings.scheduler.kill_timeout + 30)}",
            f"SyslogIdentifier=aegisctl-{job.name}",
            f"Nice={sd.nice}", "IOSchedulingClass=best-effort", "IOSchedulingPriority=7",
            "UMask=0077",
            "NoNewPrivileges=yes", "ProtectSystem=strict", f"ProtectHome={protect_home}",
            "ReadWritePaths=" + " ".join(f"-{p}" for p in rw),
            "PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes",
            "ProtectClock=yes", "ProtectHostname=yes", "RestrictSUIDSGID=yes",
            "RestrictRealtime=yes", "RestrictNamespaces=yes", "LockPersonality=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "SystemCallArchitectures=native", "CapabilityBoundingSet=", "",
        ]
        timer = [header, "[Unit]", f"Description=aegisctl job {job.name}: {_text(job.when)}", "",
                 "[Timer]"]
        timer += [f"OnCalendar={expr}" for expr in job.calendar.on_calendar()]
        if interval < 3600:  # the default AccuracySec=1min would swallow short intervals
            timer.append("AccuracySec=1s")
        timer += ["Persistent=true",
                  f"RandomizedDelaySec={_seconds(job.randomized_delay(interval))}",
                  f"Unit={UNIT_PREFIX}{job.name}.service", "",
                  "[Install]", "WantedBy=timers.target", ""]
        units.append(UnitFile(f"{UNIT_PREFIX}{job.name}.service", "\n".join(service)))
        units.append(UnitFile(f"{UNIT_PREFIX}{job.name}.timer", "\n".join(timer)))
    return units


def _write(path: Path, content: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def plan_units(units: list[UnitFile], directory: Path) -> UnitsResult:
    """Which units are new, changed or unchanged in `directory`, and which aegisctl units there
    are no longer in the schedule."""
    names = {u.name for u in units}
    for unit in units:
        path = directory / unit.name
        unit.path = str(path)
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            unit.state = "new"
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        else:
            unit.state = "unchanged" if current == unit.content else "changed"
    stale = sorted(p.name for p in directory.glob(f"{UNIT_PREFIX}*")
                   if p.suffix in (".service", ".timer") and p.name not in names) \
        if directory.is_dir() else []
    return UnitsResult(units, directory=str(directory), stale=stale)


def write_units(result: UnitsResult) -> None:
    assert result.directory is not None
    directory = Path(result.directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for unit in result.units:
            if unit.state != "unchanged":
                _write(directory / unit.name, unit.content)
    except OSError as exc:
        raise OperationFailed(f"cannot write the units into {directory}: {exc.strerror}",
                              hint="run it as root, or pass another folder") from None


def install_commands(settings: Settings, result: UnitsResult) -> list[str]:
    sd = settings.scheduler.systemd
    jobs = scheduled_jobs(settings)
    state = settings.scheduler.state_dir or DEFAULT_STATE_DIR
    commands = [
        f"getent passwd {sd.user} >/dev/null || useradd --system --user-group --home-dir "
        f"{state} --shell /usr/sbin/nologin {sd.user}",
    ]
    for path in read_write_paths(settings, jobs):
        commands.append(f"install -d -o {sd.user} -g {sd.group} -m 0700 {path}")
    # Every line is safe to paste twice: an existing secrets file is never emptied.
    commands.append(f"test -e {sd.environment_file} || install -D -m 0600 -o root -g root "
                    f"/dev/null {sd.environment_file}  # then put AEGIS_DB_PASSWORD=... in it")
    for name in result.stale:
        if name.endswith(".timer"):
            commands.append(f"systemctl disable --now {name}")
    commands += [f"rm -f {Path(result.directory or '.') / n}" for n in result.stale]
    timers = [u.name for u in result.units if u.name.endswith(".timer")]
    commands += ["systemctl daemon-reload", "systemctl enable --now " + " ".join(timers),
                 "systemctl list-timers 'aegisctl-*'"]
    return commands
