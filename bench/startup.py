"""Start-up cost of aegisctl against the floor every Typer CLI pays: `python -c "import typer"`.

Paired runs: each round runs the baseline and every candidate once, in turn, and the ratio is
taken within the round, so a machine that gets busier during the benchmark (other jobs on a
shared host) moves both sides of each ratio alike. Prints the median of the per-round ratios.

Targets (issue 21): `aegisctl --version` <= 1.2x, any group's `--help` <= 1.5x.

The floor of any `--help`: Typer draws help with rich through `typer.rich_utils`, which
imports rich's console, table, markdown (markdown-it) and traceback (pygments) modules at its
top, whatever the app. The bench measures that floor in the same rounds, `python -c "import
typer, typer.rich_utils"`, and the help of an empty Typer app (one group, two commands), and
prints each `--help` against the floor too: what aegisctl adds above what no Typer CLI can
avoid.

    nice python bench/startup.py --runs 15
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GROUPS = ["backup", "memory", "maint", "schedule", "check"]
EMPTY_APP = """
import typer

app = typer.Typer(add_completion=False)
group = typer.Typer(help="A group.")
app.add_typer(group, name="grp")


@group.command()
def one() -> None:
    \"\"\"The first command.\"\"\"


@group.command()
def two() -> None:
    \"\"\"The second command.\"\"\"


app(prog_name="empty")
"""


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
    empty = Path(tempfile.mkdtemp(prefix="aegisctl-bench-startup-")) / "empty_app.py"
    empty.write_text(EMPTY_APP)
    floors = {"floor: import typer.rich_utils": [sys.executable, "-c",
                                                  "import typer, typer.rich_utils"],
              "floor: empty app --help": [sys.executable, str(empty), "--help"],
              "floor: empty app grp --help": [sys.executable, str(empty), "grp", "--help"]}
    candidates = {**floors,"aegisctl --version": [script, "--version"],
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
    empty.unlink()
    empty.parent.rmdir()
    print(f"runs: {args.runs} paired rounds; baseline python -c 'import typer': "
          f"{statistics.median(base_ms):.1f} ms (median)")
    floor = statistics.median(ratios["floor: import typer.rich_utils"])
    for name, values in ratios.items():
        ratio = statistics.median(values)
        if name.startswith("floor"):
            print(f"{name:30s} {ratio:5.2f}x")
            continue
        target = 1.2 if name.endswith("--version") else 1.5
        verdict = "ok" if ratio <= target else "OVER"
        above = "" if name.endswith("--version") else f", {ratio / floor:4.2f}x the help floor"
        print(f"{name:30s} {ratio:5.2f}x  (target <= {target}x, {verdict}{above})")


if __name__ == "__main__":
    main()
