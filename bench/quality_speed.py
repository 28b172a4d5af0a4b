"""What judging samples costs, how many sets its decisions need, and what reference samplers score.

Prints:
  terms      per width at the default noise: the Gauss-Legendre nodes per moon, the time to compute the
             closed-form terms once, and how much twice the nodes change them (the quadrature has converged)
  mmd        one set's squared MMD at each width: on the lattice and directly, with their agreement
  parts      one set of 2000 points taken apart: MMD (three widths), C2ST, copying, spacing, on-moon
  judge      judging a default-config VAE's and CVAE's three sources (trained with early stopping, as a
             default trial): CPU seconds for 2 sets each, and with the validation protocol (each source until
             its MMD summary's standard error is 5%), with the sets that took
  sets       an exact sampler's and those models' sources' one-set spread of the MMD summary (from 64 sets), and
             the sets that spread needs for a 5% standard error: (spread / 0.05)^2
  reference  an exact sampler, and exact shapes with noise 0.12 instead of 0.15, judged with --sets sets (C2ST
             and on-moon on quality.FULL_CHECK_SETS): each score with its standard error

Times are CPU times (time.process_time, one torch thread, the median of 5 calls), which
other work on a shared machine inflates far less than wall times.

Run: python bench/quality_speed.py [--sets 64]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from moonvae.config import RunConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit
from moonvae.sampling import distribution, quality, sources

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


def term_figures() -> None:
    for scale, width in distribution.widths(NOISE).items():
        nodes = distribution.nodes(width, NOISE)
        start = time.process_time()
        coarse = distribution.kernel(width, NOISE, nodes)
        took = 1000 * (time.process_time() - start)
        fine = distribution.kernel(width, NOISE, 2 * nodes)
        probes = distribution.exact_moons(quality.N_POINTS, NOISE, distribution.rng(7))[0]
        change = (coarse.expected(probes) - fine.expected(probes)).abs().max().item()
        print(
            f"terms   {scale:4} width {width:.3f}: {nodes} nodes a moon, {took:.1f} ms once; {2 * nodes} nodes change "
            f"E_PP k by {abs(coarse.pair_mean - fine.pair_mean):.0e} and E_P k(., y) by {change:.0e} at most"
        )


def mmd_figures() -> None:
    y = distribution.exact_moons(quality.N_POINTS, NOISE, distribution.rng(1))[0]
    points = y.double()
    for scale, term in distribution.kernels(NOISE).items():
        lattice = distribution.squared_mmd(y, term)

        def direct(term: distribution.Kernel = term) -> float:
            pairs = distribution.kernel_mean(points, points, term.width)
            return term.pair_mean - 2 * float(term.expected(points).mean()) + pairs

        print(
            f"mmd     {scale:4} lattice {ms(lambda t=term: distribution.squared_mmd(y, t)):5.2f} ms, directly "
            f"{ms(direct):6.2f} ms, relative difference {abs(lattice - direct()) / direct():.0e}"
        )


def part_figures(train_x: np.ndarray) -> None:
    real, labels = distribution.exact_moons(quality.N_POINTS, NOISE, distribution.rng(1))
    fake = distribution.exact_moons(quality.N_POINTS, NOISE, distribution.rng(2))[0]
    train = cKDTree(train_x.astype(np.float64))
    parts = {
        "mmd": lambda: distribution.mmd_ratios(fake, NOISE),
        "c2st": lambda: quality.c2st_accuracy(real.numpy(), fake.numpy(), 0),
        "copying": lambda: quality.nearest_distance(fake, train),
        "spacing": lambda: quality.nearest_other(fake),
        "on_moon": lambda: quality.on_moon_share(fake, labels, NOISE),
    }
    print("parts   " + "   ".join(f"{name} {ms(call):5.1f} ms" for name, call in parts.items()))


def default_models(moons: data.MoonsData) -> dict[str, dict[str, quality.Sampler]]:
    """A default-config VAE and CVAE, trained as a default trial, and their sources."""
    found = {}
    for kind in ("vae", "cvae"):
        config = RunConfig()
        network = build_model(replace(config.model, model=kind), config.train.seed)
        fit(network, moons.train, moons.val, config.train)
        network.eval()
        mixture = sources.fit_latent_mixture(network, moons, config.train.seed)
        found[kind] = sources.samplers(network, latent_bank(network, moons.train.x, moons.train.y), mixture)
    return found


def judge_figures(models: dict[str, dict[str, quality.Sampler]], train_x: np.ndarray) -> None:
    for kind, samplers in models.items():
        options = dict(seed=sources.VALIDATION_SEED, conditional=kind == "cvae")
        two = ms(lambda s=samplers, o=options: quality.judge_all(s, train_x, NOISE, sets=2, **o))
        start = time.process_time()
        judged = quality.judge_all(
            samplers, train_x, NOISE, sets=sources.VALIDATION_SETS, target_error=sources.VALIDATION_ERROR, **options
        )
        took = time.process_time() - start
        sets = ", ".join(f"{source} {scores['sets']}" for source, scores in judged.items())
        print(f"judge   {kind:4} 2 sets a source {two / 1000:.3f} s; validation {took:.2f} s (sets: {sets})")


def spread_figures(models: dict[str, dict[str, quality.Sampler]], train_x: np.ndarray, sets: int) -> None:
    rows = {"exact sampler": (quality.exact_sampler(NOISE), True)}
    rows |= {f"{kind} {source}": (s, kind == "cvae") for kind, found in models.items() for source, s in found.items()}
    for name, (sampler, conditional) in rows.items():
        scores = quality.judge(sampler, train_x, NOISE, sets=sets, check_sets=1, conditional=conditional)
        spread = scores["mmd_summary_se"] / scores["mmd_summary"] * math.sqrt(sets)
        print(
            f"sets    {name:15} summary {scores['mmd_summary']:7.3f} +- {scores['mmd_summary_se']:.3f} ({sets} sets): "
            f"one set's spread {spread:.2f}, 5% needs {math.ceil((spread / 0.05) ** 2)} sets"
        )


def reference_figures(train_x: np.ndarray, sets: int) -> None:
    def narrower(n: int, rng: torch.Generator, labels: torch.Tensor | None) -> np.ndarray:
        return distribution.exact_moons(n, 0.12, rng, labels)[0].numpy()

    for name, sampler in {"exact sampler": quality.exact_sampler(NOISE), "noise 0.12": narrower}.items():
        options = dict(sets=sets, check_sets=quality.FULL_CHECK_SETS, conditional=True)
        scores = quality.judge(sampler, train_x, NOISE, **options)
        figures = "  ".join(
            f"{score.removeprefix('mmd_')} {scores[score]:.3f} +- {scores[score + '_se']:.3f}"
            for score in ("mmd_wide", "mmd_mid", "mmd_fine", "mmd_summary", "c2st", "on_moon")
        )
        print(f"ref     {name:13} ({sets} sets, {quality.FULL_CHECK_SETS} for c2st and on_moon): {figures}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=quality.FULL_SETS, help="sets of the spread and reference rows")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `moonvae train` and `moonvae tune` train
    with tempfile.TemporaryDirectory() as tmp:
        moons = data.load(RunConfig().data, Path(tmp))
    train_x = moons.train.x.numpy()
    term_figures()
    mmd_figures()
    part_figures(train_x)
    models = default_models(moons)
    judge_figures(models, train_x)
    spread_figures(models, train_x, args.sets)
    reference_figures(train_x, args.sets)


if __name__ == "__main__":
    main()
