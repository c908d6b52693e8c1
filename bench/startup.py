"""Start-up cost of aegisctl against the floor every Typer CLI pays: `python -c "import typer"`.

Paired runs: each round runs the baseline and every candidate once, in turn, and the ratio is
taken within the round, so a machine that gets busier during the benchmark (other jobs on a
shared host) moves both sides of each ratio alike. Prints the median of the per-round ratios.

Targets (issue 21): `aegisctl --version` <= 1.2x, any group's `--help` <= 1.5x. Wall time and
CPU time (user + system of the child) are both reported: on a shared machine wall times swing
between rounds, CPU times barely.

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
import resource
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


def run_ms(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) milliseconds of one run; CPU time (user + system of the child) barely
    moves when other jobs share the machine, wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


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
    base_wall: list[float] = []
    base_cpu: list[float] = []
    wall: dict[str, list[float]] = {name: [] for name in candidates}
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.runs):
        w, c = run_ms(baseline)
        base_wall.append(w)
        base_cpu.append(c)
        for name, argv in candidates.items():
            w2, c2 = run_ms(argv)
            wall[name].append(w2 / w)
            cpu[name].append(c2 / c)
    empty.unlink()
    empty.parent.rmdir()
    print(f"runs: {args.runs} paired rounds; baseline python -c 'import typer': "
          f"{statistics.median(base_wall):.1f} ms wall, {statistics.median(base_cpu):.1f} ms "
          "CPU (medians)")
    print("median of the per-round ratios, by wall time and by CPU time (user + system):")
    floor = "floor: import typer.rich_utils"
    for name in candidates:
        by_wall, by_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        line = f"{name:30s} {by_wall:5.2f}x wall {by_cpu:5.2f}x CPU"
        if not name.startswith("floor"):
            target = 1.2 if name.endswith("--version") else 1.5
            verdict = "ok" if by_wall <= target else "OVER"
            line += f"  (target <= {target}x, {verdict}"
            if not name.endswith("--version"):
                line += (f"; {by_wall / statistics.median(wall[floor]):4.2f}x / "
                         f"{by_cpu / statistics.median(cpu[floor]):4.2f}x the help floor")
            line += ")"
        print(line)

if __name__ == "__main__":
    main()
