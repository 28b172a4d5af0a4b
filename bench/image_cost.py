"""What a run's images cost: seconds added to a trial, and bytes stored per trial.

Trains the study's default config (early stopping on, as a default trial) a few
times per model into a fresh sqlite store, and times the image work inside
run_training: the snapshot figure, the epoch snapshots (drawing and `log_image`),
the kept model's snapshot with `plots/reconstruction.png`, and `plots/data.png`.
Wall and CPU seconds (of this thread) per run; bytes are every file under the
run's `images/` and `plots/`. The first run of each model warms up and is not shown.

Run: python bench/image_cost.py [--runs 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from moonvae.config import ModelConfig, RunConfig
from moonvae.tracking import experiment, runs


class Stopwatch:
    """Adds up wall and thread CPU seconds spent inside the functions it wraps."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def wrap(self, owner: object, name: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - wall
                self.cpu += time.thread_time() - cpu

        setattr(owner, name, timed)


def stored_bytes(artifacts: Path) -> tuple[int, int]:
    """Bytes and files under the run's images/ and plots/."""
    files = [path for folder in ("images", "plots") for path in (artifacts / folder).rglob("*") if path.is_file()]
    return sum(path.stat().st_size for path in files), len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `moonvae train` and `moonvae tune` train
    watch = Stopwatch()
    for name in ("__init__", "on_epoch", "finish"):
        watch.wrap(experiment.Snapshots, name)
    watch.wrap(experiment, "log_data_plot")
    start_folder = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the default experiment keeps its artifacts in ./mlruns
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        client = runs.client()
        print("model  epochs   files  run s   images wall s  images cpu s   KB stored")
        for model in ("vae", "cvae"):
            config = RunConfig(model=ModelConfig(model=model))
            walls, cpus = [], []
            for index in range(args.runs + 1):  # the first run warms up imports, fonts and sqlite
                watch.wall = watch.cpu = 0.0
                with runs.run(client, f"bench-{model}") as run_id:
                    start = time.perf_counter()
                    outcome = experiment.run_training(config, client, run_id, log_model=False)
                    seconds = time.perf_counter() - start
                if index == 0:
                    continue
                artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
                size, files = stored_bytes(artifacts)
                walls.append(watch.wall)
                cpus.append(watch.cpu)
                epochs = len(outcome.result.history)
                print(
                    f"{model:5s}  {epochs:6d}  {files:6d}  {seconds:5.2f}  {watch.wall:13.3f}  {watch.cpu:12.3f}"
                    f"  {size / 1024:10.0f}"
                )
            print(
                f"{model:5s}  median images wall {statistics.median(walls):.3f} s, cpu {statistics.median(cpus):.3f} s"
            )
        os.chdir(start_folder)


if __name__ == "__main__":
    main()
