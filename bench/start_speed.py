"""How fast a run starts: `moonvae train --max-epochs 1` against `python -c "import torch, mlflow"`.

One epoch trains in milliseconds, so the command's time is its start and its end: the
imports, the tracking store, measuring and judging the model, its plots and logging the
model. Its libraries' imports alone are the floor it is compared with. The two commands
take turns for --repeats rounds, each a fresh process, in a temporary folder with its own
sqlite tracking store and data cache, both made by one run first that is not counted (it
generates the data and creates the store's tables). Each prints wall and CPU time (user +
system, of the child process) as the median and the range over the rounds; the start
ratio is train's over the imports', taken per round, as the median and range of those
ratios. On a machine shared with other work wall times wander; CPU time less.

Run: python bench/start_speed.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "import torch, mlflow": [sys.executable, "-c", "import torch, mlflow"],
    "moonvae train --max-epochs 1": [sys.executable, "-m", "moonvae", "train", "--max-epochs", "1"],
}


def timed(command: list[str], folder: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run of `command` in `folder`, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            os.environ.pop(name, None)
        for command in COMMANDS.values():  # the data cache, the store's tables, the files in the OS's cache
            timed(command, folder)
        walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
        cpus: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for round_ in range(args.repeats):
            order = list(COMMANDS) if round_ % 2 == 0 else list(reversed(COMMANDS))  # neither always goes first
            for name in order:
                wall, cpu = timed(COMMANDS[name], folder)
                walls[name].append(wall)
                cpus[name].append(cpu)
    print(f"{args.repeats} rounds, the commands taking turns; seconds, median (range)")
    print(f"{'':32s} {'wall':>19s} {'CPU':>19s}")
    for name in COMMANDS:
        print(f"{name:32s} {spread(walls[name]):>19s} {spread(cpus[name]):>19s}")
    floor, train = COMMANDS
    wall_ratios = [t / f for t, f in zip(walls[train], walls[floor], strict=True)]
    cpu_ratios = [t / f for t, f in zip(cpus[train], cpus[floor], strict=True)]
    print(f"{'start ratio (train / imports)':32s} {spread(wall_ratios):>19s} {spread(cpu_ratios):>19s}")


if __name__ == "__main__":
    main()
