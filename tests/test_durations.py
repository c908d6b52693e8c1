"""Durations and ages that would overflow a date are refused where they are read (exit 2,
naming the maximum), never an OverflowError in the middle of a run."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("max_age", ["2100y", "99999999999999999999y", "30000mo"])
def test_overflowing_retention_age_is_refused_at_validation(cli, write_config,
                                                           max_age: str) -> None:
    path = write_config({"cleanup": {"policies": {"m": {
        "table": "container_metrics", "column": "timestamp", "max_age": max_age}}}})
    result = cli("config", "validate", str(path))
    assert result.exit_code == 2, result.output
    assert "maximum is 1000y" in result.stderr and "max_age" in result.stderr


def test_overflowing_durations_in_config_and_options_are_usage_errors(cli, write_config,
                                                                    db_config) -> None:
    path = write_config({"scheduler": {"lock_wait": "5000y"}}, name="lock.yaml")
    result = cli("config", "validate", str(path))
    assert result.exit_code == 2 and "maximum is 1000y" in result.stderr
    history = cli("--config", str(db_config), "jobs", "history", "--since", "100000y")
    assert history.exit_code == 2, history.output
    assert "maximum is 1000y" in history.stderr
