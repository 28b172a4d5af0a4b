"""Where to draw latents from: the prior, the aggregate posterior, or a mixture fitted to the latents.

Trains each model below once (seed 42, early stopping, the study's data), fits the
latent mixture to the means with diagonal and with full covariances, and with full ones
plus the decoder's training noise (`train_noise`), and judges every source with the
full protocol (quality.FULL_SETS sets of 2000 points). Prints one row per model and
source: the MMD summary and the three widths' ratios, c2st, copying, spacing and on_moon
(CVAE), each with its standard error over the sets, and for mixtures the components per
mixture and the fit's CPU seconds. An exact sampler scores 1, 0.50, 1.00, 1.00 and 0.991.

Run: python bench/sources.py [--sets 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from moonvae.config import ModelConfig, RunConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit
from moonvae.sampling import density, quality, sources

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


def row(model: str, source: str, scores: dict[str, float], extra: str = "") -> str:
    def figure(score: str, digits: int) -> str:
        return f"{scores[score]:.{digits}f} +- {scores[score + '_se']:.{digits}f}" if score in scores else "-"

    figures = [figure(score, 2) for score in ("mmd_summary", "mmd_wide", "mmd_mid", "mmd_fine")]
    figures += [figure("c2st", 3), figure("copying", 2), figure("spacing", 2), figure("on_moon", 4)]
    return f"| {model} | {source} | {' | '.join(figures)} | {extra} |"


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
        judge = dict(sets=args.sets, seed=args.seed)
        print(f"{args.sets} sets of {quality.N_POINTS} points; +- is the standard error over the sets")
        print("| model | source | summary | wide | mid | fine | c2st | copying | spacing | on_moon | mixture |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, model in MODELS.items():
            network = build_model(model, config.train.seed)
            start = time.process_time()
            fit(network, moons.train, moons.val, config.train)
            trained = time.process_time() - start
            train = latent_bank(network, moons.train.x, moons.train.y)
            val = latent_bank(network, moons.val.x, moons.val.y)
            conditional = model.conditional
            options = dict(judge, conditional=conditional)
            prior = quality.judge(sources.prior_sampler(network), train_x, noise, **options)
            print(row(name, "prior", prior, f"(trained in {trained:.1f} s)"))
            posterior = quality.judge(sources.posterior_sampler(network, train), train_x, noise, **options)
            print(row(name, "posterior", posterior))
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
                scores = quality.judge(sources.mixture_sampler(network, mixture), train_x, noise, **options)
                components = "+".join(str(k) for k in mixture["components"].tolist())
                print(row(name, source, scores, f"{components} in {fitted:.1f} s"))


if __name__ == "__main__":
    main()
