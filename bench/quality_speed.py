"""What judging samples costs, next to a default trial's training, and what an exact sampler scores.

Prints:
  kernel     one 2000 x 2000 kernel mean: float32 blocks (quality) vs float64 cdist, and their MMDs
  parts      one round of judge() taken apart: MMD, C2ST, copying, spacing, on-moon
  floor      computing the floor (once per noise and n) vs reading it from the cache
  judge      judge() of a default-config VAE's posterior and CVAE's posterior for sets = 1, 2, 4, 16,
             in ms and as a share of the model's training time
  exact      the exact sampler's scores with the full protocol (16 sets) over several seeds: ~1x, ~0.5, ~1,
             and the mean mmd_ratio over the seeds with its standard error

Times are CPU times (time.process_time, one torch thread), which other work on a
shared machine inflates far less than wall times.

Run: python bench/quality_speed.py [--seeds 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from moonvae.config import RunConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit
from moonvae.sampling import quality
from moonvae.sampling.quality import c2st_accuracy

NOISE = RunConfig().data.noise
REPEATS = 5  # timings are the median of this many calls


def ms(call: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median CPU time of `call` in milliseconds, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return 1000 * float(np.median(times))


def float64_kernel_mean(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> float:
    """The plain way: float64 cdist, the whole matrix at once."""
    return float(torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2)).mean())


def kernel_figures() -> None:
    a, b = (quality.exact_moons(quality.N_POINTS, NOISE, quality.generator(k))[0] for k in (1, 2))
    bandwidth = quality.mmd_floor(NOISE).bandwidth
    ours = quality.mmd(a, b, bandwidth)
    a64, b64 = a.double(), b.double()
    theirs = float64_kernel_mean(a64, a64, bandwidth) + float64_kernel_mean(b64, b64, bandwidth)
    theirs -= 2 * float64_kernel_mean(a64, b64, bandwidth)
    print(f"kernel  float32 blocks {ms(lambda: quality.kernel_mean(a, b, bandwidth)):6.1f} ms   ", end="")
    print(f"float64 cdist {ms(lambda: float64_kernel_mean(a64, b64, bandwidth)):6.1f} ms")
    print(f"        MMD {ours:.6e} vs {theirs:.6e} (relative difference {abs(ours - theirs) / theirs:.1e})")


def part_figures(train_x: np.ndarray) -> None:
    real, labels = quality.exact_moons(quality.N_POINTS, NOISE, quality.generator(1))
    fake = quality.exact_moons(quality.N_POINTS, NOISE, quality.generator(2))[0]
    train = torch.from_numpy(train_x)
    bandwidth = quality.mmd_floor(NOISE).bandwidth
    parts = {
        "mmd": lambda: quality.mmd(real, fake, bandwidth),
        "c2st": lambda: c2st_accuracy(real.numpy(), fake.numpy(), 0),
        "copying": lambda: (quality.nearest_distance(fake, train), quality.nearest_distance(real, train)),
        "spacing": lambda: quality.nearest_other(fake),
        "on_moon": lambda: quality.on_moon_share(fake, labels, NOISE),
    }
    print("parts   " + "   ".join(f"{name} {ms(call):5.1f} ms" for name, call in parts.items()))


def floor_figures() -> None:
    with tempfile.TemporaryDirectory() as cache:
        quality.compute_floor.cache_clear()
        start = time.process_time()
        floor = quality.mmd_floor(NOISE, quality.N_POINTS, Path(cache))
        computed = time.process_time() - start
        quality.compute_floor.cache_clear()
        read = ms(lambda: quality.mmd_floor(NOISE, quality.N_POINTS, Path(cache)))
    spread = floor.mmd_std / floor.mmd
    print(f"floor   computed in {computed:.1f} s, read from the cache in {read:.2f} ms: {floor.mmd:.3e} ", end="")
    print(f"(one pair's spread {spread:.2f}x, the mean's {spread / floor.pairs**0.5:.2f}x)")


def judge_figures(moons: data.MoonsData) -> None:
    train_x = moons.train.x.numpy()
    for kind in ("vae", "cvae"):
        config = RunConfig()
        network = build_model(replace(config.model, model=kind), config.train.seed)
        start = time.process_time()
        fit(network, moons.train, moons.val, config.train)
        trained = 1000 * (time.process_time() - start)
        sampler = quality.posterior_sampler(network, latent_bank(network, moons.train.x, moons.train.y))
        figures = []
        for sets in (1, 2, 4, 16):
            options = dict(sets=sets, conditional=kind == "cvae")
            cost = ms(lambda s=sampler, o=options: quality.judge(s, train_x, NOISE, **o))
            figures.append(f"sets={sets} {cost:6.0f} ms ({100 * cost / trained:4.1f}%)")
        print(f"judge   {kind:4} default config, trained in {trained:5.0f} ms: " + "  ".join(figures))


def exact_figures(train_x: np.ndarray, seeds: int) -> None:
    sampler = quality.exact_sampler(NOISE)
    ratios = []
    for seed in range(seeds):
        scores = quality.judge(sampler, train_x, NOISE, sets=quality.FULL_SETS, seed=seed, conditional=True)
        ratios.append(scores["mmd_ratio"])
        print(
            f"exact   seed {seed}: mmd_ratio {scores['mmd_ratio']:.2f} (one set's spread {scores['mmd_ratio_std']:.2f})"
            f"  c2st {scores['c2st']:.3f}  copying {scores['copying']:.3f}  spacing {scores['spacing']:.3f}"
            f"  on_moon {scores['on_moon']:.4f}"
        )
    error = np.std(ratios, ddof=1) / np.sqrt(seeds)
    print(
        f"exact   mean mmd_ratio over {seeds} seeds: {np.mean(ratios):.2f} +- {error:.2f}, "
        f"range {min(ratios):.2f}-{max(ratios):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds of the exact sampler's full-protocol scores")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `moonvae train` and `moonvae tune` train
    with tempfile.TemporaryDirectory() as tmp:
        moons = data.load(RunConfig().data, Path(tmp))
    train_x = moons.train.x.numpy()
    floor_figures()
    kernel_figures()
    part_figures(train_x)
    judge_figures(moons)
    exact_figures(train_x, args.seeds)


if __name__ == "__main__":
    main()
