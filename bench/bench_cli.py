"""How fast the command line answers: `datamill --help` and refusing a YAML alias bomb.

    python bench/bench_cli.py [--repeat 5]

Each command runs in a fresh process (as a user types it); the figure is the median wall time.
Targets: `--help` < 1 s (it imports no torch, polars or pydantic); an alias bomb refused in < 1 s
with a peak RSS < 100 MB. `python -c pass` is printed as the floor any Python CLI pays.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BOMB = "\n".join(["a: &a [" + ", ".join(['"lol"'] * 9) + "]"] +
                 [f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi")] +
                 ["name: bomb"])


def timed(command: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit code) of one fresh process."""
    started = time.perf_counter()
    proc = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.005)
    return time.perf_counter() - started, peak, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cli = [sys.executable, "-c", "from datamill.curate.cli import main; main()"]
    with tempfile.TemporaryDirectory() as folder:
        bomb = Path(folder) / "bomb.yaml"
        bomb.write_text(BOMB)
        cases = {"python -c pass": [sys.executable, "-c", "pass"], "datamill --help": [*cli, "--help"],
                 "datamill validate bomb.yaml": [*cli, "validate", str(bomb)]}
        print(f"{'command':<30} {'median s':>9} {'peak RSS MB':>12} {'exit':>5}")
        for name, command in cases.items():
            runs = [timed(command) for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            peak = max(r[1] for r in runs) / 2**20
            print(f"{name:<30} {wall:>9.3f} {peak:>12.1f} {runs[-1][2]:>5}")
        from datamill.curate.engine.recipe import RecipeError, load_recipe

        started = time.perf_counter()
        try:
            load_recipe(bomb)
        except RecipeError:
            pass
        print(f"{'in process: load_recipe(bomb)':<30} {time.perf_counter() - started:>9.3f}")


if __name__ == "__main__":
    main()
