"""A study's speed, side by side in one run: per epoch, per trial batch size K, and the default `make tune`.

Prints, in order:
  per epoch       bench/train_speed.py's figures (moonvae's fit and fit_batch against the
                  original report's plain loop and, where `lightning` is installed, its stack)
  K = 1, 4, 16    a basic-space VAE study of --trials trials (default max_epochs, median
                  pruning, seed 42) with --trials-at-once K, in a fresh sqlite store each:
                  wall seconds, trials per minute, best val MSE
  make tune       `moonvae tune` with every default (both models side by side, 100 trials
                  each, what `make tune` runs through `mlflow run`), --runs times in fresh
                  folders: wall seconds, each model's best val MSE, and whether the runs agree

Run: python bench/study_speed.py [--trials 48] [--runs 2] [--skip-epoch]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from moonvae.tracking import runs
from moonvae.tuning import search

HERE = Path(__file__).resolve().parent
BATCH_SIZES = (1, 4, 16)


def study_with(k: int, trials: int) -> tuple[float, float, str]:
    """Wall seconds, best val MSE and trial states of a basic VAE study trained K trials at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        start = time.perf_counter()
        plan = search.plan("vae", "basic", trials, trials_at_once=k)
        (result,) = search.run(plan, runs.client())
        seconds = time.perf_counter() - start
        study = plan.studies[plan.targets[0].name]
        states = [trial.state.name.lower() for trial in study.trials]
        counts = ", ".join(f"{states.count(state)} {state}" for state in sorted(set(states)))
        return seconds, study.best_value, counts


def default_tune() -> tuple[float, dict[str, float]]:
    """Wall seconds of `moonvae tune` with its defaults in a fresh folder, and each study's best value."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
        env["PYTHONPATH"] = str(HERE.parent)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "moonvae", "tune"], cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL
        )
        seconds = time.perf_counter() - start
        storage = f"sqlite:///{tmp}/optuna.db"
        best = {
            summary.study_name: optuna.load_study(study_name=summary.study_name, storage=storage).best_value
            for summary in optuna.get_all_study_summaries(storage)
        }
        return seconds, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=48, help="trials of each K's study")
    parser.add_argument("--runs", type=int, default=2, help="default `moonvae tune` calls, to see they agree")
    parser.add_argument("--skip-epoch", action="store_true", help="leave out bench/train_speed.py's figures")
    args = parser.parse_args()
    if not args.skip_epoch:
        print("== per epoch (bench/train_speed.py --repeats 1)", flush=True)
        subprocess.run([sys.executable, str(HERE / "train_speed.py"), "--repeats", "1"], check=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search.quiet()
    here = os.getcwd()
    print(f"\n== a basic VAE study of {args.trials} trials, K trials trained at once", flush=True)
    for k in BATCH_SIZES:
        seconds, best, counts = study_with(k, args.trials)
        os.chdir(here)
        rate = 60 * args.trials / seconds
        print(f"K={k:<3d} {seconds:6.1f} s  {rate:5.1f} trials/min  best val MSE {best:.5f}  ({counts})")
    print("\n== the default `moonvae tune` (both models, 100 trials each; make tune)", flush=True)
    values = []
    for run in range(args.runs):
        seconds, best = default_tune()
        values.append(best)
        figures = ", ".join(f"{name} best val MSE {value:.5f}" for name, value in sorted(best.items()))
        print(f"run {run + 1}: {seconds:6.1f} s wall; {figures}", flush=True)
    if len(values) > 1:
        print("runs agree: " + ("yes, value for value" if all(each == values[0] for each in values) else "NO"))


if __name__ == "__main__":
    main()
