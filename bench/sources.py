"""Where to draw latents from: the prior, the aggregate posterior, or a mixture fitted to the latents.

Trains each model below once (seed 42, early stopping, the study's data), fits the
latent mixture to the means with diagonal and with full covariances, and with full ones
plus the decoder's training noise (`train_noise`), and judges every source with the
full protocol (16 sets of 2000 points). Prints one row per model and source:
mmd_ratio with its standard error over the sets (mean +- std / sqrt(sets)), c2st,
copying, spacing, on_moon (CVAE), and for mixtures the components per mixture and the
fit's CPU seconds. An exact sampler scores 1 +- 0.2, 0.50, 1.00, 1.00 and 0.991.

Run: python bench/sources.py [--sets 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch

from moonvae.config import ModelConfig, RunConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit
from moonvae.sampling import density, quality

MODELS = {  # eps_w / beta / latent_dim / encoder / decoder
    "vae 0.1/1/128/8/128 (defaults)": ModelConfig(),
    "vae 1/0.01/8/64/64-64": ModelConfig(
        eps_w=1.0, beta=0.01, latent_dim=8, encoder_hidden=(64,), decoder_hidden=(64, 64)
    ),
    "cvae 0.1/1/128/8/128 (defaults)": ModelConfig(model="cvae"),
    "cvae 1/0.01/2/64/64-64": ModelConfig(
        model="cvae", eps_w=1.0, beta=0.01, latent_dim=2, encoder_hidden=(64,), decoder_hidden=(64, 64)
    ),
}


def row(model: str, source: str, scores: dict[str, float], sets: int, extra: str = "") -> str:
    error = scores["mmd_ratio_std"] / math.sqrt(sets)
    on_moon = f"{scores['on_moon']:.4f}" if "on_moon" in scores else "-"
    return (
        f"| {model} | {source} | {scores['mmd_ratio']:.2f} +- {error:.2f} | {scores['c2st']:.3f} "
        f"| {scores['copying']:.2f} | {scores['spacing']:.2f} | {on_moon} | {extra} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=quality.FULL_SETS)
    parser.add_argument("--seed", type=int, default=0, help="judge() seed: the references and the samples")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `moonvae train` and `moonvae tune` train
    warnings.filterwarnings("ignore", module="sklearn")  # a mixture not converged in 100 EM steps is still a mixture
    config = RunConfig()
    with tempfile.TemporaryDirectory() as tmp:
        moons = data.load(config.data, Path(tmp))
        train_x, noise = moons.train.x.numpy(), config.data.noise
        judge = dict(sets=args.sets, seed=args.seed, floor_cache=Path(tmp))
        print("| model | source | mmd_ratio | c2st | copying | spacing | on_moon | mixture |")
        print("|---|---|---|---|---|---|---|---|")
        for name, model in MODELS.items():
            network = build_model(model, config.train.seed)
            start = time.process_time()
            fit(network, moons.train, moons.val, config.train)
            trained = time.process_time() - start
            train = latent_bank(network, moons.train.x, moons.train.y)
            val = latent_bank(network, moons.val.x, moons.val.y)
            conditional = model.conditional
            options = dict(judge, conditional=conditional)
            prior = quality.judge(quality.prior_sampler(network), train_x, noise, **options)
            print(row(name, "prior", prior, args.sets, f"(trained in {trained:.1f} s)"))
            posterior = quality.judge(quality.posterior_sampler(network, train), train_x, noise, **options)
            print(row(name, "posterior", posterior, args.sets))
            labels = (train.y, val.y) if conditional else (None, None)
            spread = density.training_noise(train.logvar, model.eps_w)
            for source, covariance, train_noise in (
                ("mixture diag", "diag", None),
                ("mixture full", "full", None),
                ("mixture full + noise", "full", spread),
            ):
                start = time.process_time()
                mixture = density.fit_mixture(
                    train.mean, labels[0], val.mean, labels[1], seed=args.seed, covariance=covariance,
                    train_noise=train_noise,
                )  # fmt: skip
                fitted = time.process_time() - start
                scores = quality.judge(quality.mixture_sampler(network, mixture), train_x, noise, **options)
                components = "+".join(str(k) for k in mixture["components"].tolist())
                print(row(name, source, scores, args.sets, f"{components} in {fitted:.1f} s"))


if __name__ == "__main__":
    main()
