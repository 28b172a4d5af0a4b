"""A generative study per model, timed, and the @generator it registers judged with the full protocol.

Runs `moonvae tune --space generative` (in process: search.plan + search.run) for the
VAE and the CVAE in a fresh folder (sqlite tracking store and Optuna storage), then loads
`models:/moonvae-{kind}@generator` and judges every source as `analyse` does
(quality.FULL_SETS sets of 2000 points, seed 0). Prints per model: wall time, trials,
the Pareto front's size, the generator's params (its likelihood and prior among them),
its validation figures, its learned sigma_x (calibrated decoders), and per source the
full-protocol MMD summary and widths, c2st, copying, spacing and on_moon, each with its
standard error over the sets.

Run: python bench/generative_study.py [--trials 25] [--max-epochs 200] [--n-jobs 1] [--folder DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import optuna

from moonvae.analysis import aliases
from moonvae.core import data
from moonvae.core.train import one_torch_thread
from moonvae.sampling import quality
from moonvae.serving import loading
from moonvae.tracking import names, runs
from moonvae.tuning import search


def judge_generator(kind: str, seed: int = 0) -> tuple[str, dict[str, dict[str, float]], dict[str, str], float | None]:
    """The registered generator's default source, every source's full-protocol scores, its params and sigma_x."""
    python_model, run_id = loading.load_python_model(names.model_uri(kind, names.GENERATOR))
    config = python_model.config
    train = data.load(config.data).train
    with one_torch_thread():
        surveyed = aliases.survey(
            kind,
            "generator",
            python_model.network.eval(),
            python_model.bank,
            python_model.mixture,
            python_model.default_source,
            config,
            train.x,
            run_id,
            seed=seed,
        )
    params = runs.client().get_run(run_id).data.params
    return surveyed.default_source, surveyed.judgement.scores, params, python_model.network.sigma_x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["vae", "cvae"])
    parser.add_argument("--folder", help="keep the stores here (default: a temporary folder)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="generative-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; stores in {folder}")
    for kind in args.models:
        plan = search.plan(kind, "generative", args.trials, n_jobs=args.n_jobs, fixed={"max_epochs": args.max_epochs})
        start = time.perf_counter()
        (result,) = search.run(plan, runs.client())
        wall = time.perf_counter() - start
        values = ", ".join(f"{key} {value:.4g}" for key, value in result.best_values.items())
        print(
            f"\n{kind}: {args.trials} trials, max_epochs {args.max_epochs}, n_jobs {args.n_jobs}: {wall:.0f} s "
            f"({wall / args.trials:.1f} s per trial); load {os.getloadavg()[0]:.1f}"
        )
        print(f"  Pareto front {len(result.pareto)} trials; generator trial {result.best_trial}: {values} (validation)")
        default, judged, params, sigma_x = judge_generator(kind)
        searched = {key: params[key] for key in (*plan.space.distributions, "likelihood")}
        print(f"  params {searched}" + (f"; sigma_x {sigma_x:.4f}" if sigma_x is not None else ""))
        for source, scores in judged.items():
            figures = ", ".join(
                f"{score} {scores[score]:.3g} +- {scores[score + '_se']:.2g}"
                for score in quality.SCORES
                if score in scores
            )
            mark = " (default)" if source == default else ""
            print(f"  @generator source {source}{mark}, full protocol ({scores['sets']} sets): {figures}")


if __name__ == "__main__":
    main()
