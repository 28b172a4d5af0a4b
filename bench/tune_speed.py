"""Seconds per tuning trial, and what the tuner adds to the training itself.

Runs the probabilistic space (its trials differ only in eps_w and beta, so they
cost about the same) at the study's default model for a fixed number of epochs
(early stopping off), in a fresh sqlite tracking store and Optuna storage:
  bare       fit() alone, per trial, with torch's default threads and with one
  n_jobs=1   a study of --trials trials, one at a time (trials_at_once=1, so each trains with fit), wall
             seconds per trial (trials train on one thread)
  n_jobs=2   the same with two worker threads
The difference between bare and n_jobs=1 is the tuner's cost: MLflow runs,
batched metrics, plots, the logged model, Optuna reports and bookkeeping.

Run: python bench/tune_speed.py [--trials 6] [--epochs 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import optuna
import torch

from moonvae.config import RunConfig
from moonvae.core import data
from moonvae.core.models import build_model
from moonvae.core.train import fit
from moonvae.tracking import runs
from moonvae.tuning import search


def study_seconds_per_trial(folder: Path, trials: int, epochs: int, n_jobs: int) -> float:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    fixed = {"max_epochs": epochs, "patience": epochs}
    plan = search.plan(
        "vae", "probabilistic", trials, study_base=f"bench-{n_jobs}", n_jobs=n_jobs, fixed=fixed, trials_at_once=1
    )
    start = time.perf_counter()
    search.run(plan, runs.client())
    return (time.perf_counter() - start) / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chdir(folder)
        config = RunConfig.from_flat({"max_epochs": args.epochs, "patience": args.epochs})
        moons = data.load(config.data)
        bare = {}
        for threads in (torch.get_num_threads(), 1):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            fit(build_model(config.model, config.train.seed), moons.train, moons.val, config.train)
            bare[threads] = time.perf_counter() - start
        single = study_seconds_per_trial(folder, args.trials, args.epochs, n_jobs=1)
        double = study_seconds_per_trial(folder, args.trials, args.epochs, n_jobs=2)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.trials} trials of {args.epochs} epochs")
    for threads, seconds in bare.items():
        print(f"bare      {seconds:6.2f} s/trial  (fit alone, {threads} torch thread{'s' if threads > 1 else ''})")
    print(f"n_jobs=1  {single:6.2f} s/trial  (tuner cost {single - bare[1]:+.2f} s/trial over fit on 1 thread)")
    print(f"n_jobs=2  {double:6.2f} s/trial  (wall time per trial, two workers)")


if __name__ == "__main__":
    main()
