"""Trials per minute of batched.fit_batch against train.fit, on random configs from the basic space.

Draws --trials configs as the basic space's random start-up would (encoder_hidden,
latent_dim and decoder_hidden each from {2, 4, ..., 128}, lr log-uniform in
[1e-4, 1e-1]) with batch_size 256, trains each for --epochs epochs (early stopping
off) and prints trials per minute and ms per epoch per trial:
  fit                      one trial at a time with train.fit
  fit_batch K=k            the trials in batches of k, in the order drawn
  fit_batch K=k by width   the same after sorting the trials by their widest layer,
                           so a batch pads its members to similar widths
A member whose loss diverges leaves its batch early; epochs count as trained.
Each --variant (likelihood-prior) trains the same configs with those options:
mse-normal is the study's loss (hand-written gradients in the stack), gaussian-normal
the calibrated decoder (hand-written too), gaussian-vamp the VampPrior (autograd).
Times are CPU seconds of the one torch thread, as the machine may be shared.

Run: python bench/trial_batch_speed.py [--trials 16] [--epochs 100] [--variants mse-normal gaussian-vamp]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from moonvae.config import ModelConfig, RunConfig, TrainConfig
from moonvae.core import data
from moonvae.core.batched import fit_batch
from moonvae.core.models import build_model
from moonvae.core.train import TrainingDiverged, fit

WIDTHS = (2, 4, 8, 16, 32, 64, 128)  # the basic space's choices for each width
BATCH_SIZES = (1, 4, 16)  # K, configs trained at once


def random_configs(count: int, epochs: int, seed: int, likelihood: str, prior: str) -> list[RunConfig]:
    rng = random.Random(seed)
    return [
        RunConfig(
            model=ModelConfig(
                encoder_hidden=(rng.choice(WIDTHS),),
                latent_dim=rng.choice(WIDTHS),
                decoder_hidden=(rng.choice(WIDTHS),),
                likelihood=likelihood,
                prior=prior,
            ),
            train=TrainConfig(lr=10 ** rng.uniform(-4, -1), batch_size=256, max_epochs=epochs, patience=epochs),
        )
        for _ in range(count)
    ]


def widest(config: RunConfig) -> int:
    return max(*config.model.encoder_hidden, config.model.latent_dim, *config.model.decoder_hidden)


def one_at_a_time(configs: Sequence[RunConfig], moons: data.MoonsData) -> int:
    epochs = 0
    for config in configs:
        network = build_model(config.model, config.train.seed)
        history: list = []
        try:
            fit(network, moons.train, moons.val, config.train, on_epoch=history.append)
        except TrainingDiverged:
            epochs += 1  # the diverged epoch was trained too
        epochs += len(history)
    return epochs


def in_batches(configs: Sequence[RunConfig], moons: data.MoonsData, k: int) -> int:
    epochs = 0
    for start in range(0, len(configs), k):
        for member in fit_batch(configs[start : start + k], moons.train, moons.val):
            epochs += len(member.result.history) + member.diverged  # the diverged epoch was trained too
    return epochs


def timed(train: Callable[[], int]) -> tuple[float, int]:
    start = time.process_time()
    epochs = train()
    return time.process_time() - start, epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="seed of the configs drawn")
    parser.add_argument("--variants", nargs="+", default=["mse-normal"], help="likelihood-prior pairs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `moonvae tune` trains
    print(f"torch {torch.__version__}, 1 thread, {args.trials} trials of {args.epochs} epochs, batch_size 256")
    print(f"{'':42} {'trials/min':>10} {'ms/epoch/trial':>15} {'CPU s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        moons = data.load(RunConfig().data, Path(tmp))
        for variant in args.variants:
            likelihood, prior = variant.split("-")
            configs = random_configs(args.trials, args.epochs, args.seed, likelihood, prior)
            by_width = sorted(configs, key=widest)
            warm_up = [replace(config, train=replace(config.train, max_epochs=3)) for config in configs[:4]]
            one_at_a_time(warm_up, moons), in_batches(warm_up, moons, 4)  # first-call costs of torch and MKL
            rows = {"fit": timed(lambda configs=configs: one_at_a_time(configs, moons))}
            for k in BATCH_SIZES:
                rows[f"fit_batch K={k}"] = timed(lambda k=k, configs=configs: in_batches(configs, moons, k))
                if 1 < k < len(configs):
                    rows[f"fit_batch K={k} by width"] = timed(
                        lambda k=k, by_width=by_width: in_batches(by_width, moons, k)
                    )
            for name, (seconds, epochs) in rows.items():
                label = f"{variant}: {name}"
                print(f"{label:42} {args.trials / seconds * 60:10.1f} {seconds * 1000 / epochs:15.2f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
