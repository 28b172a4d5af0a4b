"""What the calibrated decoder learns and how its samples look: sigma_x, the -ELBO, the prior's moons, every source.

Trains a sigma-VAE (likelihood gaussian; eps_w 1, beta 1, latent 2, encoder and decoder
2 x --width, Adam 3e-3 without lr decay, --epochs epochs, on 1000 points of the given noise)
for each model x prior x noise x seed asked for, and prints per run: the kept model's
sigma_x, its validation -ELBO in nats per point (+- its Monte Carlo error), the share
of its prior samples on the requested moon (CVAE; chance is 0.5, an exact sampler 0.991
at noise 0.15), and, with --judge, every sampling source judged with the full protocol
(quality.FULL_SETS sets of 2000 points, seed 0): the MMD summary and its three widths, c2st,
copying and on_moon, each +- its standard error over the sets. Then, per model x prior x
noise, sigma_x's mean and spread over the seeds.

Run: python bench/calibration.py [--models vae cvae] [--priors normal vamp] [--noises 0.15 0.05]
     [--seeds 0 1 2] [--epochs 1500] [--width 32] [--judge]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from moonvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit, negative_elbo
from moonvae.sampling import quality, sources

ON_MOON_POINTS = 2000


def config(model: str, prior: str, noise: float, seed: int, epochs: int, width: int) -> RunConfig:
    model_config = ModelConfig(
        model=model,
        encoder_hidden=(width, width),
        decoder_hidden=(width, width),
        latent_dim=2,
        beta=1.0,
        eps_w=1.0,
        likelihood="gaussian",
        prior=prior,
        pseudo_inputs=16,
    )
    return RunConfig(
        DataConfig(n_samples=1000, noise=noise),
        model_config,
        TrainConfig(lr=3e-3, max_epochs=epochs, patience=epochs, lr_patience=epochs, seed=seed),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vae", "cvae"])
    parser.add_argument("--priors", nargs="+", default=["normal", "vamp"])
    parser.add_argument("--noises", nargs="+", type=float, default=[0.15, 0.05])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--width", type=int, default=32, help="of the encoder's and the decoder's two layers")
    parser.add_argument("--judge", action="store_true", help="judge every source with the full protocol")
    args = parser.parse_args()
    torch.set_num_threads(1)
    learned: dict[tuple[str, str, float], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for noise in args.noises:
            for model in args.models:
                for prior in args.priors:
                    for seed in args.seeds:
                        run = config(model, prior, noise, seed, args.epochs, args.width)
                        moons = data.load(run.data, Path(tmp))
                        network = build_model(run.model, seed)
                        result = fit(network, moons.train, moons.val, run.train)
                        bound = negative_elbo(network, moons.val)
                        learned.setdefault((model, prior, noise), []).append(network.sigma_x)
                        line = (
                            f"{model} {prior:6} noise {noise} seed {seed}: sigma_x {network.sigma_x:.4f} "
                            f"(best epoch {result.best_epoch}), val -ELBO {bound.nats:.4f} +- {bound.stderr:.4f}"
                        )
                        if model == "cvae":
                            labels = torch.arange(2).repeat(ON_MOON_POINTS // 2)
                            drawn = network.sample(ON_MOON_POINTS, labels, torch.Generator().manual_seed(seed))
                            line += f", prior on moon {quality.on_moon_share(drawn, labels, noise):.4f}"
                        print(line, flush=True)
                        if args.judge:
                            bank = latent_bank(network, moons.train.x, moons.train.y)
                            mixture = sources.fit_latent_mixture(network, moons, seed)
                            options = dict(sets=quality.FULL_SETS, check_sets=quality.FULL_CHECK_SETS, seed=0)
                            judgement = sources.judge_sources(
                                network, bank, mixture, moons.train.x, noise, target_error=None, **options
                            )
                            for source, scores in judgement.scores.items():
                                figures = ", ".join(
                                    sources.figure(scores, score) for score in sources.NOTE_SCORES if score in scores
                                )
                                print(f"    {source:9}: {figures}", flush=True)
    print("\nsigma_x over the seeds (mean, sd, n):")
    for (model, prior, noise), values in learned.items():
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"  {model} {prior:6} noise {noise}: {statistics.mean(values):.4f} sd {spread:.4f} n {len(values)}")


if __name__ == "__main__":
    main()
