"""Warnings go through the output path (logging): --quiet leaves only errors, and
--log-format json makes each warning one JSON line."""

from __future__ import annotations

import json


def test_warnings_follow_quiet_and_log_format(cli, write_config, tmp_path) -> None:
    path = write_config({
        "backup": {"directory": str(tmp_path / "backups")},
        "schedule": {"health": {"command": "health", "every": "5m"}},
        "scheduler": {"systemd": {"executable": "/nonexistent/bin/aegisctl",
                                  "config_path": "/etc/aegisctl/config.yaml"}},
    })
    shown = cli("--config", str(path), "systemd", "render", "-f", "json")
    assert shown.exit_code == 0, shown.output
    assert "aegisctl: WARNING: scheduler.systemd.executable /nonexistent/bin/aegisctl" \
        in shown.stderr

    quiet = cli("--quiet", "--config", str(path), "systemd", "render", "-f", "json")
    assert quiet.exit_code == 0 and quiet.stderr == ""

    logged = cli("--log-format", "json", "--config", str(path), "systemd", "render", "-f",
                 "json")
    records = [json.loads(line) for line in logged.stderr.splitlines()]
    assert {r["level"] for r in records} == {"warning"}
    assert any("does not exist" in r["message"] for r in records)
