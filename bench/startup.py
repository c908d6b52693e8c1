"""Start-up cost of `aegisctl --version` against the floor every Typer CLI pays: `import typer`.

Prints the median wall time of each over N runs (default 15) and their ratio. Target: <= 1.3.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_ms(argv: list[str], runs: int) -> float:
    subprocess.run(argv, check=True, capture_output=True)  # warm the page cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    script = shutil.which("aegisctl") or str(Path(sys.executable).parent / "aegisctl")
    baseline = median_ms([sys.executable, "-c", "import typer"], args.runs)
    version = median_ms([script, "--version"], args.runs)
    helptext = median_ms([script, "--help"], args.runs)
    print(f"runs: {args.runs} (median wall time)")
    print(f"python -c 'import typer': {baseline:7.1f} ms  (baseline)")
    print(f"aegisctl --version:       {version:7.1f} ms  ratio {version / baseline:.2f}  (target <= 1.30)")
    print(f"aegisctl --help:          {helptext:7.1f} ms  ratio {helptext / baseline:.2f}")


if __name__ == "__main__":
    main()
