"""Start-up cost of aegisctl against the floor every Typer CLI pays: `python -c "import typer"`.

Paired runs: each round runs the baseline and every candidate once, in turn, and the ratio is
taken within the round, so a machine that gets busier during the benchmark (other jobs on a
shared host) moves both sides of each ratio alike. Prints the median of the per-round ratios.

Targets (issue 21): `aegisctl --version` <= 1.2x, any group's `--help` <= 1.5x.

    nice python bench/startup.py --runs 15
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

GROUPS = ["backup", "memory", "maint", "schedule", "check"]


def wall_ms(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    script = shutil.which("aegisctl") or str(Path(sys.executable).parent / "aegisctl")
    baseline = [sys.executable, "-c", "import typer"]
    candidates = {"aegisctl --version": [script, "--version"],
                  "aegisctl --help": [script, "--help"],
                  **{f"aegisctl {g} --help": [script, g, "--help"] for g in GROUPS}}
    for argv in [baseline, *candidates.values()]:
        subprocess.run(argv, check=True, capture_output=True)  # warm the page cache
    base_ms: list[float] = []
    ratios: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.runs):
        base = wall_ms(baseline)
        base_ms.append(base)
        for name, argv in candidates.items():
            ratios[name].append(wall_ms(argv) / base)
    print(f"runs: {args.runs} paired rounds; baseline python -c 'import typer': "
          f"{statistics.median(base_ms):.1f} ms (median)")
    for name, values in ratios.items():
        target = 1.2 if name.endswith("--version") else 1.5
        ratio = statistics.median(values)
        verdict = "ok" if ratio <= target else "OVER"
        print(f"{name:28s} {ratio:5.2f}x  (target <= {target}x, {verdict})")


if __name__ == "__main__":
    main()
