"""The suite is hermetic: AEGISCTL_* variables a developer exported for daily work (a data
directory, a config, a state folder) reach no test; each test has its own state folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = "AEGISCTL_TEST_HERMETIC_PROBE"


@pytest.mark.skipif(not os.environ.get(PROBE), reason="run by test_exported_variables_...")
def test_probe(tmp_path: Path) -> None:
    from aegisctl.config import validate
    from aegisctl.paths import state_dir

    leaked = [n for n in os.environ if n.startswith("AEGISCTL_")
              and not n.startswith("AEGISCTL_TEST") and n != "AEGISCTL_STATE_DIR"]
    assert leaked == []
    assert state_dir(validate({}, "test")) == tmp_path / "state"


def test_exported_variables_do_not_reach_the_tests(tmp_path: Path) -> None:
    env = {**os.environ, PROBE: "1", "AEGISCTL_DATA_DIR": str(tmp_path / "daily-pgdata"),
           "AEGISCTL_CONFIG": str(tmp_path / "daily.yaml"), "AEGISCTL_DSN": "postgresql://x@h/y",
           "AEGISCTL_STATE_DIR": str(tmp_path / "daily-state")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{__file__}::test_probe"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 passed" in done.stdout
    assert not (tmp_path / "daily-state").exists()
