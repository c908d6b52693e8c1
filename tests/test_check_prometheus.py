"""aegisctl check --prometheus: the textfile passes `promtool check metrics` and follows the
naming conventions (base units, ratios 0-1, one family per quantity, a status gauge per check);
the shipped alerting rules pass `promtool check rules`, their own unit tests, and fire on a real
textfile written by a real check run (promtool comes with Debian's `prometheus` package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

RULES = Path(__file__).parent.parent / "prometheus" / "aegisctl-rules.yml"


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return found


def test_shipped_rules_pass_promtool(promtool: str) -> None:
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "aegisctl-rules.test.yml"],
                            cwd=RULES.parent, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _textfile(cli: Any, write_config: Any, dsn: str, tmp_path: Path) -> Path:
    config = write_config({"targets": {"primary": {"dsn": dsn, "expected_replicas": 0}},
                           "backup": {"directory": str(tmp_path / "backups")},
                           "checks": {"connections_pct": {"warning": 0, "critical": 99},
                                      "vector_recall": {"sample": 0}}})
    out = tmp_path / "aegisctl.prom"
    result = cli("--config", str(config), "check", "--prometheus", str(out))
    assert result.exit_code == 2, result.output  # backup_age: configured, no backup yet
    return out


def test_textfile_is_lint_clean_and_follows_the_naming_conventions(
        cli, write_config, aegis_dsn, tmp_path, promtool: str) -> None:
    out = _textfile(cli, write_config, aegis_dsn, tmp_path)
    text = out.read_text()
    linted = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True)
    assert linted.returncode == 0 and not linted.stdout.strip() and not linted.stderr.strip(), \
        linted.stdout + linted.stderr
    families = {f.name: f for f in text_string_to_metric_families(text)}
    status = {s.labels["check"]: s.value for s in families["aegisctl_check_status"].samples}
    assert status["connections"] == 1 and status["backup_age"] == 2
    assert set(status.values()) <= {0, 1, 2, 3}
    # Percentages become ratios; one family per quantity, no unit label anywhere.
    [connections] = families["aegisctl_connections_used_ratio"].samples
    assert 0 < connections.value < 1 and connections.labels == {"target": "primary"}
    assert 0 <= families["aegisctl_disk_used_ratio"].samples[0].value <= 1
    assert "aegisctl_table_bloat_bytes" in families
    assert "aegisctl_oldest_transaction_age_seconds" in families
    assert all("unit" not in s.labels for f in families.values() for s in f.samples)
    assert not any("percent" in name for name in families)
    warn = {s.labels["check"]: s.value
            for s in families["aegisctl_check_warning_threshold_ratio"].samples}
    assert warn["connections"] == 0 and warn["disk_space"] == 0.8


def test_rules_fire_on_a_real_textfile(cli, write_config, aegis_dsn, tmp_path,
                                       promtool: str) -> None:
    """The real file's samples held for 30 minutes: every WARNING and CRITICAL check of the
    run raises its alert, under the names the rules read."""
    out = _textfile(cli, write_config, aegis_dsn, tmp_path)
    series = []
    expected: dict[str, list[dict[str, Any]]] = {"AegisctlCheckWarning": [],
                                                 "AegisctlCheckCritical": []}
    for family in text_string_to_metric_families(out.read_text()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            name = sample.name + (f"{{{labels}}}" if labels else "")
            value = sample.value if family.name != "aegisctl_check_last_run_timestamp_seconds" \
                else 1800  # "now" in the test's clock: the file is fresh
            series.append({"series": name, "values": f"{value!r}x30"})
            if sample.name == "aegisctl_check_status" and sample.value in (1, 2):
                check, target = sample.labels["check"], sample.labels["target"]
                alert = "AegisctlCheckWarning" if sample.value == 1 else "AegisctlCheckCritical"
                annotations = {"summary": f"aegisctl check {check} is "
                                          f"{'WARNING' if sample.value == 1 else 'CRITICAL'} "
                                          f"on {target}"}
                if sample.value == 2:
                    annotations["description"] = (f"Run `aegisctl check --target {target} "
                                                  f"--only {check}` for the message.")
                expected[alert].append({
                    "exp_labels": {"severity": "warning" if sample.value == 1 else "critical",
                                   "target": target, "check": check},
                    "exp_annotations": annotations})
    assert expected["AegisctlCheckWarning"] and expected["AegisctlCheckCritical"]
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
                 {"eval_time": "20m", "alertname": name, "exp_alerts": alerts}
                 for name, alerts in expected.items()] + [
                 {"eval_time": "20m", "alertname": "AegisctlTargetDown", "exp_alerts": []},
                 {"eval_time": "20m", "alertname": "AegisctlStandbyMissing", "exp_alerts": []}]}]}
    spec = tmp_path / "real.test.yml"
    spec.write_text(yaml.safe_dump(tests))
    ran = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
