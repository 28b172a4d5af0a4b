"""A study's speed, side by side in one run: per epoch, per trial, per batch size K, and the default `make tune`.

Prints, in order:
  per epoch       bench/train_speed.py's figures (moonvae's fit and fit_batch against the
                  original report's plain loop and, where `lightning` is installed, its stack)
  per trial       the tuner's cost per trial over `fit`, in CPU seconds: a basic-space VAE study
                  of --trials trials of --epochs epochs (early stopping off, median pruning, one
                  trial at a time so each trains with fit): the study's CPU time less the training's
                  inside fit (fit's time less its per-epoch callback's: the tuner's logging and
                  pruning), over the trials; --repeats studies, mean and spread, after a warm-up
                  study (imports and first calls, paid once by a process)
  K = 1, 4, 16    a basic-space VAE study of --k-trials trials (default max_epochs, median
                  pruning, seed 42) with --trials-at-once K, in a fresh sqlite store each:
                  wall seconds, trials per minute, best val MSE
  make tune       `moonvae tune` with every default (both models side by side, 100 trials each,
                  what `make tune` runs through `mlflow run`), --runs times in fresh folders, each
                  between two timings of the original plain loop (train_speed.plain_loop_ms, 200
                  epochs): wall seconds, the same in plain-loop epochs, each model's best val MSE,
                  and whether the runs agree
  start           bench/start_speed.py's figures, when that script is there

CPU times (time.process_time, every thread of this process) move far less with a shared
machine's load than wall times; the default tune's wall time is only as good as the
machine is idle.

Run: python bench/study_speed.py [--trials 24] [--epochs 100] [--repeats 3] [--runs 2]
     [--skip-epoch] [--skip-k] [--skip-tune]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from generation_cost import TIMED, timed
from train_speed import plain_loop_ms

from moonvae.config import RunConfig
from moonvae.core import data
from moonvae.core.train import fit
from moonvae.tracking import experiment, runs
from moonvae.tuning import asking, results, search
from moonvae.tuning import trials as tuning_trials

HERE = Path(__file__).resolve().parent
BATCH_SIZES = (1, 4, 16)
PLAIN_EPOCHS = 200  # of each plain-loop timing around a default tune
GOAL_EPOCHS, GOAL_TRIAL_SECONDS = 3000, 0.1


def spread(values: list[float]) -> str:
    """`mean +- standard deviation (n)`."""
    deviation = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} +- {deviation:.3f} (n={len(values)})"


class TimedFit:
    """trials.fit, timed: the CPU seconds inside fit, and inside its per-epoch callback (the tuner's logging and
    pruning), so the training alone is the one minus the other, measured in the study itself."""

    def __init__(self) -> None:
        self.fit_seconds = self.callback_seconds = 0.0

    def __call__(self, network: Any, train: Any, val: Any, config: Any, on_epoch: Any = None) -> Any:
        def timed_epoch(metrics: Any) -> None:
            start = time.process_time()
            try:
                on_epoch(metrics)
            finally:
                self.callback_seconds += time.process_time() - start

        start = time.process_time()
        try:
            return fit(network, train, val, config, timed_epoch if on_epoch else None)
        finally:
            self.fit_seconds += time.process_time() - start


PARTS = {  # where the tuner's time goes: each part's CPU seconds, inclusive (finish includes judge)
    "ask (sampler)": (asking, "next_trial"),
    "run start": (tuning_trials, "_start_run"),
    "run set-up (params, data, model)": (tuning_trials, "_tracked_run"),
    "measure (test, usage)": (experiment.TrackedRun, "measure"),
    "finish (judge, metrics, plots)": (experiment.TrackedRun, "finish"),
    "judge": (experiment.Outcome, "judge"),
    "log model (leaders)": (experiment.TrackedRun, "log_model"),
    "end (run, tell)": (tuning_trials, "_end"),
    "study summary (plots, registry)": (results, "summarise"),
}


def tuner_cost(folder: Path, trials: int, epochs: int) -> tuple[float, float, float]:
    """CPU seconds of a K=1 basic study, of the training inside it, and of the per-epoch logging and pruning."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    fixed = {"max_epochs": epochs, "patience": epochs}
    plan = search.plan("vae", "basic", trials, study_base=folder.name, fixed=fixed, trials_at_once=1)
    timed_fit = tuning_trials.fit = TimedFit()
    originals = {part: getattr(owner, name) for part, (owner, name) in PARTS.items()}
    for part, (owner, name) in PARTS.items():
        setattr(owner, name, timed(part, originals[part]))
    try:
        start = time.process_time()
        search.run(plan, runs.client())
        study_seconds = time.process_time() - start
    finally:
        tuning_trials.fit = fit
        for part, (owner, name) in PARTS.items():
            setattr(owner, name, originals[part])
    return study_seconds, timed_fit.fit_seconds - timed_fit.callback_seconds, timed_fit.callback_seconds


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


def plain_ms() -> float:
    """The original plain loop's milliseconds per epoch, now, on one torch thread as the tuner trains."""
    config = RunConfig.from_flat({"max_epochs": PLAIN_EPOCHS, "patience": PLAIN_EPOCHS})
    with tempfile.TemporaryDirectory() as tmp:
        moons = data.load(config.data, Path(tmp))
        return plain_loop_ms(config, moons, PLAIN_EPOCHS, f"sqlite:///{tmp}/plain.db")


def per_trial(args: argparse.Namespace) -> None:
    print(f"\n== the tuner's cost per trial over fit ({args.trials} trials of {args.epochs} epochs, K=1)", flush=True)
    costs, per_epoch = [], []
    with tempfile.TemporaryDirectory() as tmp:  # imports and first calls, paid once by any process, not timed
        folder = Path(tmp) / "warm-up"
        folder.mkdir()
        os.chdir(folder)
        tuner_cost(folder, 2, 5)
    TIMED.clear()
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / f"trial-cost-{repeat}"
            folder.mkdir()
            os.chdir(folder)
            study, training, epochs = tuner_cost(folder, args.trials, args.epochs)
        costs.append((study - training) / args.trials)
        per_epoch.append(epochs / args.trials)
        print(
            f"repeat {repeat + 1}: study {study:.2f} s CPU, training in fit {training:.2f} s: {costs[-1]:.3f} s a "
            f"trial over fit, of which {per_epoch[-1]:.3f} s per-epoch logging and pruning",
            flush=True,
        )
    print(f"tuner cost per trial over fit: {spread(costs)} s of CPU; goal under {GOAL_TRIAL_SECONDS} s")
    print(f"  of which per-epoch logging and pruning: {spread(per_epoch)} s")
    studies = args.repeats * args.trials
    print(
        "  by part, CPU s a trial (inclusive, means over the repeats): "
        + ", ".join(f"{part} {sum(seconds) / studies:.3f}" for part, seconds in TIMED.items())
    )


def k_studies(args: argparse.Namespace, here: str) -> None:
    print(f"\n== a basic VAE study of {args.k_trials} trials, K trials trained at once", flush=True)
    for k in BATCH_SIZES:
        seconds, best, counts = study_with(k, args.k_trials)
        os.chdir(here)
        rate = 60 * args.k_trials / seconds
        print(f"K={k:<3d} {seconds:6.1f} s  {rate:5.1f} trials/min  best val MSE {best:.5f}  ({counts})")


def tunes(args: argparse.Namespace) -> None:
    print("\n== the default `moonvae tune` (both models, 100 trials each; make tune)", flush=True)
    values, plain = [], [plain_ms()]
    for run in range(args.runs):
        seconds, best = default_tune()
        plain.append(plain_ms())
        around = (plain[-2] + plain[-1]) / 2
        values.append(best)
        figures = ", ".join(f"{name} best val MSE {value:.5f}" for name, value in sorted(best.items()))
        print(
            f"run {run + 1}: {seconds:6.1f} s wall = {1000 * seconds / around:,.0f} plain-loop epochs "
            f"(plain loop {plain[-2]:.2f} and {plain[-1]:.2f} ms/epoch before and after; goal {GOAL_EPOCHS:,}); "
            f"{figures}",
            flush=True,
        )
    print(f"plain loop: {spread(plain)} ms/epoch")
    if len(values) > 1:
        print("runs agree: " + ("yes, value for value" if all(each == values[0] for each in values) else "NO"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="trials of each per-trial study")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of each per-trial study's trials")
    parser.add_argument("--repeats", type=int, default=3, help="per-trial studies, each with its bare fits")
    parser.add_argument("--k-trials", type=int, default=48, help="trials of each K's study")
    parser.add_argument("--runs", type=int, default=2, help="default `moonvae tune` calls, to see they agree")
    parser.add_argument("--skip-epoch", action="store_true", help="leave out bench/train_speed.py's figures")
    parser.add_argument("--skip-k", action="store_true", help="leave out the K = 1, 4, 16 studies")
    parser.add_argument("--skip-tune", action="store_true", help="leave out the default `moonvae tune` calls")
    args = parser.parse_args()
    if not args.skip_epoch:
        print("== per epoch (bench/train_speed.py --repeats 1)", flush=True)
        subprocess.run([sys.executable, str(HERE / "train_speed.py"), "--repeats", "1"], check=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search.quiet()
    torch.set_num_threads(1)  # as the tuner trains
    here = os.getcwd()
    per_trial(args)
    os.chdir(here)
    if not args.skip_k:
        k_studies(args, here)
    if not args.skip_tune:
        tunes(args)
    start = HERE / "start_speed.py"
    if start.exists():
        print("\n== start-up (bench/start_speed.py)", flush=True)
        subprocess.run([sys.executable, str(start)], check=True)
    else:
        print("\n== start-up: bench/start_speed.py is not there yet")


if __name__ == "__main__":
    main()
