"""What judging a run's samples costs, next to the run itself: a default trial, timed part by part.

Runs `experiment.run_training` (what a `train` run and a tuning trial do) on the study's
default model, VAE and CVAE, with early stopping as in a default trial, in a throwaway
sqlite store. Per run it prints the wall and CPU time of the whole run, the CPU time of
the training loop, of fitting the latent mixture and of judging the three sources (each
until its MMD summary's standard error is sources.VALIDATION_ERROR, with the sets that
took), and their shares of the run's CPU time (on a shared machine, wall time grows with
the others' load, CPU time far less). Then the screening judgement a trial gets when no
decision reads it (`sources.screen_sources`) of the same trained network: the median and
range of SCREEN_REPEATS calls' CPU time, against the goal of GOAL_SECONDS a trial.

Run: python bench/generation_cost.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from moonvae.config import SOURCES, RunConfig
from moonvae.core.models import latent_bank
from moonvae.core.train import one_torch_thread
from moonvae.sampling import sources
from moonvae.tracking import experiment, runs

SCREEN_REPEATS = 7
GOAL_SECONDS = 0.05  # CPU seconds of judging a trial whose judgement decides nothing
TIMED: dict[str, list[float]] = defaultdict(list)  # CPU seconds of each timed part, per call


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            TIMED[name].append(time.process_time() - start)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="runs per model, training seeds 42, 43, ...")
    args = parser.parse_args()
    experiment.fit = timed("train", experiment.fit)
    sources.fit_latent_mixture = timed("mixture", sources.fit_latent_mixture)
    sources.judge_sources = timed("judge", sources.judge_sources)
    with tempfile.TemporaryDirectory() as tmp, one_torch_thread():
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        client = runs.client()
        runs.quiet()
        print("| model | seed | epochs | run wall s | run CPU s | train s | mixture s | judge s | sets | judge | both")
        print("|---|---|---|---|---|---|---|---|---|---|---")
        shares, screens = defaultdict(list), defaultdict(list)
        for kind in ("vae", "cvae"):
            for seed in range(42, 42 + args.seeds):
                config = RunConfig.from_flat({"model": kind, "seed": seed})
                TIMED.clear()
                start, cpu = time.perf_counter(), time.process_time()
                with runs.run(client, f"{kind}-{seed}") as run_id:
                    outcome = experiment.run_training(config, client, run_id)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                train, mixture, judge = (TIMED[name][0] for name in ("train", "mixture", "judge"))
                shares[kind].append((judge, judge / cpu, (judge + mixture) / cpu))
                sets = "/".join(str(scores["sets"]) for scores in outcome.judgement.scores.values())
                print(
                    f"| {kind} | {seed} | {len(outcome.result.history)} | {wall:.2f} | {cpu:.2f} | {train:.2f} "
                    f"| {mixture:.2f} | {judge:.2f} | {sets} | {judge / cpu:.1%} | {(judge + mixture) / cpu:.1%}"
                )
                screens[kind].append(screening_seconds(outcome, config))
        print(f"sets: {'/'.join(SOURCES)}")
        for kind, seconds in screens.items():
            every = np.concatenate(seconds)
            print(
                f"{kind}: screening a trial {np.median(every):.3f} s of CPU (median of {len(every)} calls over "
                f"{len(seconds)} runs, range {every.min():.3f}-{every.max():.3f}; goal {GOAL_SECONDS} s), "
                f"{sources.SCREENING_SETS} sets each of posterior and prior"
            )
        for kind, values in shares.items():
            seconds, judge, both = np.mean(values, axis=0)
            print(
                f"{kind}: judging {seconds:.2f} s, {judge:.1%} of a default run's CPU time, "
                f"with the mixture fit {both:.1%} (means of {len(values)} runs)"
            )


def screening_seconds(outcome: experiment.Outcome, config: RunConfig) -> np.ndarray:
    """CPU seconds of SCREEN_REPEATS screenings of a trained run's network, the latent bank included."""
    network, train = outcome.network, outcome.data.train
    seconds = []
    for _ in range(SCREEN_REPEATS):
        start = time.process_time()
        bank = latent_bank(network, train.x, train.y)
        sources.screen_sources(network, bank, train.x, config.data.noise)
        seconds.append(time.process_time() - start)
    return np.array(seconds)


if __name__ == "__main__":
    main()
