"""The systemd unit for `backup wal stream` (Type=simple), for the unit renderer to include."""

from __future__ import annotations

import shlex


def wal_stream_unit(aegisctl: str, config_path: str | None, target: str | None = None,
                    user: str | None = None, environment_file: str | None = None,
                    environment: list[str] | None = None) -> str:
    """aegisctl-wal-stream[@target].service: restarted when it stops, stopped with SIGTERM
    (aegisctl stops the receiver and archives what it has). Its secrets (a target's
    password_env) come from the same EnvironmentFile as the jobs'."""
    argv = [aegisctl]
    if config_path:
        argv += ["--config", config_path]
    if target:
        argv += ["--target", target]
    argv += ["--quiet", "backup", "wal", "stream"]
    lines = [
        "[Unit]",
        "Description=aegisctl: stream WAL for point-in-time recovery"
        + (f" ({target})" if target else ""),
        "After=network-online.target postgresql.service",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(shlex.quote(a) for a in argv),
        "Restart=always",
        "RestartSec=10s",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=90s",
    ]
    if user:
        lines.append(f"User={user}")
    if environment_file:
        lines.append(f"EnvironmentFile=-{environment_file}")
    lines += list(environment or [])
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)
