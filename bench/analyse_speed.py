"""Seconds per step of `moonvae analyse` for one model at the study's default size (latent 128).

Prints, for a CVAE trained briefly on the default data (2000 points):
  metrics     evaluate_model at n_eval points (test and fresh reconstruction error)
  terms       the MMD's closed-form terms at the data's noise (once per process)
  sources     prior, posterior and mixture judged with the full protocol (64 sets of 2000 points)
  traversal   decoding every latent dimension's sweep with both labels
  umap cold   the first UMAP fit in a process (numba compiles then)
  umap warm   a second fit on the same latents
  report      rendering report.html with those figures

Run: python bench/analyse_speed.py [--n-eval 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from moonvae.analysis import aliases, figures, reconstruction, report
from moonvae.config import ModelConfig, RunConfig, TrainConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit
from moonvae.sampling import distribution, sources

T = TypeVar("T")


def timed(label: str, func: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = func()
    print(f"{label:<10} {time.perf_counter() - start:7.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-eval", type=int, default=reconstruction.N_EVAL)
    args = parser.parse_args()
    config = RunConfig()
    with tempfile.TemporaryDirectory() as tmp:
        moons = data.load(config.data, Path(tmp))
        network = build_model(ModelConfig(model="cvae"), seed=0)
        fit(network, moons.train, moons.val, TrainConfig(max_epochs=30))
        bank = latent_bank(network, moons.train.x, moons.train.y)
        print(f"CVAE latent {bank.mean.shape[1]}, {len(moons.train)} training points, n_eval {args.n_eval}")
        metrics, samples = timed(
            "metrics", lambda: reconstruction.evaluate_model(network, bank, moons, config.data, args.n_eval)
        )
        timed("terms", lambda: distribution.kernels(config.data.noise))
        mixture = sources.fit_latent_mixture(network, moons, seed=0)
        timed(
            "sources",
            lambda: aliases.survey(
                "cvae",
                "bench",
                network,
                bank,
                mixture,
                "mixture",
                config,
                moons.train.x,
                None,
                seed=0,
            ),
        )
        timed("traversal", lambda: figures.traversal_paths(network, bank, (0, 1)))
        timed("umap cold", lambda: figures.fit_umap(bank.mean.numpy(), 0))
        timed("umap warm", lambda: figures.fit_umap(bank.mean.numpy(), 0))
        drawn, _ = figures.model_figures("cvae", network, bank, moons.train, samples, 0)
        drawn.append(figures.data_figure(0))
        timed(
            "report",
            lambda: report.write(Path(tmp) / "report.html", "bench", "", [], drawn),
        )


if __name__ == "__main__":
    main()
