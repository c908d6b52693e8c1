"""Unattended operation: the schedule, job runs with locks and history, systemd units and
the built-in scheduler."""
