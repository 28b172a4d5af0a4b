"""How good is a sampler? Its samples judged against the exact two-moons distribution.

make_moons puts its points on a fixed, evenly spaced grid of angles with exactly half
the points on each moon, so two make_moons sets resemble each other far more than two
independent samples of the distribution do (MMD 7x lower at 2000 points): no sampler
can reach that. Every reference here is instead an independent draw of the continuous
distribution make_moons discretises (`exact_moons`), and a score is a ratio to what an
exact sampler gets:
- MMD: the biased (V-statistic) squared MMD with an RBF kernel exp(-|a-b|^2 / (2 s^2)),
  s the median pairwise distance of real points, fixed once per noise level. The floor
  is the mean MMD of pairs of independent exact sets; it depends only on (noise, n)
  and is cached. `mmd_ratio` is a sampler's mean MMD over `sets` sample sets (each
  against its own fresh reference) divided by the floor: about 1 for an exact sampler.
- C2ST: held-out accuracy of a k-NN classifier telling real from generated (0.5: alike).
- Copying: median distance from a sample to its nearest training point, over the same
  for fresh real points. About 1: new points; below 1: copies of the training data (or
  a distribution narrower than the data's, which also sits closer to training points).
- Spacing: median distance from a sample to its nearest other sample, over the same in
  exact sets of n points. About 1: as spread as the data; below 1: clumps or filaments,
  which the MMD's wide kernel and C2ST's k = sqrt(n) neighbours smooth over (a diagonal
  latent mixture in 128 dimensions decoded to clumps 5x too tight and still scored an
  MMD ratio of 1.2 and a C2ST of 0.48); above 1: too dispersed.
- On moon (conditional samplers): the share of samples drawn for moon k that the
  Bayes-optimal moon classifier puts on moon k, averaged over the moons. With the
  distribution known exactly that classifier needs no training data and no seed, and
  no classifier does better: an exact sampler scores the Bayes accuracy (0.991 at
  noise 0.15).

Pure: torch and numpy arrays in, floats out; no MLflow.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from moonvae.core.models import VAE, LatentBank
from moonvae.sampling.density import sample_mixture

N_POINTS = 2000  # points per set, as evaluate.N_EVAL
FLOOR_PAIRS = 256  # pairs of exact sets averaged into the floor: its standard error 5% (32 pairs: 15%)
BANDWIDTH_POINTS = 2000  # exact points whose median pairwise distance is the kernel bandwidth
FULL_SETS = 16  # sample sets of the full protocol (an exact sampler: 0.7-1.2x the floor, 10th-90th percentile)
TRIAL_SETS = 2  # sample sets per training trial: ~0.1 s (bench/quality_speed.py), and a spread
KERNEL_ROWS = 256  # rows of a kernel block: 2 MB of float32 at n = 2000, kept in cache
# angles per moon in the Bayes classifier's integral: 4x faster than 512 (whose 2000 x 512 blocks overflow the
# cache), and agreeing with it on all but 0.01-0.04% of points at noise 0-0.3
MOON_GRID = 256
MIN_NOISE = 0.01  # noise the classifier assumes at noise 0: the nearest-moon rule, smoothly
PROTOCOL = 3  # bump when the floor's definition changes: cached floors of other versions are recomputed

# independent random streams, so no two draws of the protocol ever share a seed
FLOOR_STREAM, BANDWIDTH_STREAM, REFERENCE_STREAM, SAMPLE_STREAM = range(4)

# sample(n, generator, labels) -> n x 2 points; labels (n moon labels) only for conditional samplers
Sampler = Callable[[int, torch.Generator, torch.Tensor | None], np.ndarray]


def generator(*key: int) -> torch.Generator:
    """A torch generator seeded from a tuple of ints: distinct tuples give unrelated streams."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0]))


def exact_moons(
    n: int, noise: float, generator: torch.Generator, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n independent points of the distribution make_moons discretises, and their moon labels.

    moon ~ Bernoulli(1/2) (or the given labels), angle t ~ U(0, pi); moon 0 is
    (cos t, sin t), moon 1 is (1 - cos t, 0.5 - sin t); Gaussian noise of std `noise`
    on both coordinates.
    """
    if labels is None:
        labels = torch.randint(2, (n,), generator=generator)
    t = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    lower = labels.to(torch.bool)
    x = torch.where(lower, 1 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    noisy = torch.stack([x, y], dim=1) + noise * torch.randn((n, 2), generator=generator, dtype=torch.float64)
    return noisy.float(), labels


def exact_sampler(noise: float) -> Sampler:
    """A perfect sampler, for the sanity figures: its scores are what `judge` calls ideal."""

    def sample(n: int, generator: torch.Generator, labels: torch.Tensor | None = None) -> np.ndarray:
        return exact_moons(n, noise, generator, labels)[0].numpy()

    return sample


def kernel_mean(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> float:
    """Mean RBF kernel over all pairs (a_i, b_j).

    Squared distances come from matrix products in float32 (|a|^2 + |b|^2 - 2ab), in
    blocks of rows that stay in cache: 3-6x faster than float64 cdist, and summed in
    float64 the MMD stays within 1e-6 (relative) of float64's (bench/quality_speed.py).
    """
    scale, b_norms, total = -0.5 / bandwidth**2, (b * b).sum(1), 0.0
    for rows in a.split(KERNEL_ROWS):
        squared = torch.addmm(b_norms.expand(len(rows), -1), rows, b.T, alpha=-2).add_(
            (rows * rows).sum(1, keepdim=True)
        )
        total += float(squared.clamp_min_(0).mul_(scale).exp_().sum(dtype=torch.float64))
    return total / (len(a) * len(b))


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Biased squared MMD with an RBF kernel (float32 points; >= 0)."""
    return max(kernel_mean(x, x, bandwidth) + kernel_mean(y, y, bandwidth) - 2 * kernel_mean(x, y, bandwidth), 0.0)


def nearest_distance(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distance from each row of x to its nearest row of `points`.

    A k-d tree in float64: exact, and 4x faster on 2000 points than float32 cdist, whose
    matrix-product distances err by up to 1% at the spacing of 2000 moons points.
    """
    return torch.from_numpy(cKDTree(points.double().numpy()).query(x.double().numpy())[0])


def nearest_other(x: torch.Tensor) -> torch.Tensor:
    """Distance from each row of x to its nearest other row (its second neighbour: the first is itself)."""
    points = x.double().numpy()
    return torch.from_numpy(cKDTree(points).query(points, k=2)[0][:, 1])


def knn(n_train: int) -> KNeighborsClassifier:
    """k = sqrt(n): consistent as n grows, smooth enough for 2-D densities."""
    return KNeighborsClassifier(n_neighbors=max(1, round(math.sqrt(n_train))))


def c2st_accuracy(real: np.ndarray, generated: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a k-NN classifier telling real from generated points (0.5 = indistinguishable).

    The neighbours come from a k-d tree and vote, a tie going to 'real': what `knn(n)`
    predicts, in two thirds of its time (every run judges 6 sets of 2000 points).
    """
    x = np.concatenate([real, generated])
    origin = np.concatenate([np.zeros(len(real)), np.ones(len(generated))])
    x_fit, x_held, o_fit, o_held = train_test_split(x, origin, test_size=0.5, stratify=origin, random_state=seed)
    k = knn(len(x_fit)).n_neighbors
    neighbours = cKDTree(x_fit).query(x_held, k=k)[1].reshape(len(x_held), k)
    predicted = o_fit[neighbours].sum(axis=1) > k / 2
    return float(np.mean(predicted == o_held))


@dataclass(frozen=True)
class Floor:
    """What an exact sampler scores at (noise, n): the MMD every ratio divides by."""

    noise: float
    n: int
    bandwidth: float  # the kernel's s, the median pairwise distance of exact points
    mmd: float  # mean MMD over FLOOR_PAIRS pairs of independent exact sets
    mmd_std: float  # their spread (sample std)
    spacing: float  # median distance from a point to its nearest other point in a set, mean over the sets
    pairs: int = FLOOR_PAIRS
    protocol: int = PROTOCOL


_computing = threading.Lock()  # one thread computes a floor while the others wait for it


@cache
def compute_floor(noise: float, n: int) -> Floor:
    """The floor from scratch (4-8 s at n = 2000, 0.4 s at n = 500); remembered for the process."""
    real = exact_moons(BANDWIDTH_POINTS, noise, generator(BANDWIDTH_STREAM))[0]
    bandwidth = float(torch.pdist(real.double()).median())
    values, spacings = [], []
    for pair in range(FLOOR_PAIRS):
        first, second = (exact_moons(n, noise, generator(FLOOR_STREAM, pair, side))[0] for side in (0, 1))
        values.append(mmd(first, second, bandwidth))
        spacings.append(float(nearest_other(first).median()))
    return Floor(noise, n, bandwidth, float(np.mean(values)), float(np.std(values, ddof=1)), float(np.mean(spacings)))


def floor_path(cache_dir: Path, noise: float, n: int) -> Path:
    return Path(cache_dir) / f"mmd_floor_{noise}_{n}.json"


def mmd_floor(noise: float, n: int = N_POINTS, cache_dir: Path | None = None) -> Floor:
    """The floor at (noise, n), read from `cache_dir` when there, else computed and written there.

    Written to a temporary file and renamed into place, so parallel trials never read
    a half-written floor; a floor of another protocol version is recomputed. Trial
    threads that need a floor at once wait for one of them to compute it.
    """
    if cache_dir is None:
        with _computing:
            return compute_floor(noise, n)
    path = floor_path(cache_dir, noise, n)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("protocol") == PROTOCOL and stored.get("pairs") == FLOOR_PAIRS:
            return Floor(**stored)
    with _computing:
        floor = compute_floor(noise, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(asdict(floor), file)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return floor


def moon_log_likelihood(x: torch.Tensor, noise: float) -> torch.Tensor:
    """log p(x | moon k) up to a shared constant (n x 2): the noise density integrated over each moon's angle."""
    t = torch.linspace(0, math.pi, MOON_GRID)
    curves = [torch.stack([torch.cos(t), torch.sin(t)], 1), torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)]
    scale = max(noise, MIN_NOISE)
    return torch.stack([torch.logsumexp(-torch.cdist(x, c).pow(2) / (2 * scale**2), dim=1) for c in curves], dim=1)


def on_moon_share(x: torch.Tensor, labels: torch.Tensor, noise: float) -> float:
    """Share of points the Bayes classifier puts on their requested moon, averaged over the moons requested."""
    on = moon_log_likelihood(x, noise).argmax(dim=1) == labels
    return float(np.mean([on[labels == k].float().mean().item() for k in labels.unique()]))


def judge(
    sample: Sampler,
    train_x: np.ndarray,
    noise: float,
    *,
    sets: int = TRIAL_SETS,
    n: int = N_POINTS,
    seed: int = 0,
    conditional: bool = False,
    floor_cache: Path | None = None,
) -> dict[str, float]:
    """A sampler's scores, unprefixed: mmd, mmd_floor, mmd_ratio, mmd_ratio_std, c2st, copying, spacing (+ on_moon).

    Each of `sets` rounds draws a fresh exact reference of n points and n samples; a
    conditional sampler is asked for labels drawn as the reference's are, Bernoulli(1/2)
    but independently (the reference's own labels would give both sets the same moon
    counts, and an exact sampler 0.8x the floor). mmd and c2st are means
    over the rounds, mmd_ratio_std the spread of the rounds' ratios (NaN for one
    round: the standard error of mmd_ratio is mmd_ratio_std / sqrt(sets)); copying
    and spacing pool the rounds' distances. `train_x` holds the training points,
    `noise` the data's noise. Same arguments, same numbers: samplers of one model
    judged with one seed meet the same references.
    """
    options = dict(sets=sets, n=n, seed=seed, conditional=conditional, floor_cache=floor_cache)
    return judge_all({"": sample}, train_x, noise, **options)[""]


def judge_all(
    samplers: dict[str, Sampler],
    train_x: np.ndarray,
    noise: float,
    *,
    sets: int = TRIAL_SETS,
    n: int = N_POINTS,
    seed: int = 0,
    conditional: bool = False,
    floor_cache: Path | None = None,
) -> dict[str, dict[str, float]]:
    """`judge` of several samplers at once, by name: the same numbers, with each reference's own terms computed once.

    Every sampler meets the same references and is asked for the same labels (a fresh
    sample stream per sampler), so their scores compare pairwise; the reference's
    kernel mean and distances to the training points, a fifth of a round's work,
    are shared.
    """
    floor = mmd_floor(noise, n, floor_cache)
    references = generator(REFERENCE_STREAM, seed)
    draws = {name: generator(SAMPLE_STREAM, seed) for name in samplers}
    train = torch.as_tensor(np.asarray(train_x), dtype=torch.float32)
    found: dict[str, dict[str, list]] = {name: defaultdict(list) for name in samplers}
    real_gaps = []
    for round_ in range(sets):
        real = exact_moons(n, noise, references)[0]
        real_kernel = kernel_mean(real, real, floor.bandwidth)
        real_gaps.append(nearest_distance(real, train))
        for name, sample in samplers.items():
            labels = torch.randint(2, (n,), generator=draws[name]) if conditional else None
            fake = torch.as_tensor(np.asarray(sample(n, draws[name], labels)), dtype=torch.float32)
            if fake.shape != (n, 2) or not torch.isfinite(fake).all():
                raise ValueError(f"the sampler must return {n} finite 2-D points, got shape {tuple(fake.shape)}")
            mmd_value = (
                real_kernel + kernel_mean(fake, fake, floor.bandwidth) - 2 * kernel_mean(real, fake, floor.bandwidth)
            )
            scores = found[name]
            scores["mmd"].append(max(mmd_value, 0.0))
            scores["c2st"].append(c2st_accuracy(real.numpy(), fake.numpy(), seed + round_))
            scores["sample_gaps"].append(nearest_distance(fake, train))
            scores["spacings"].append(nearest_other(fake))
            if conditional:
                scores["on_moon"].append(on_moon_share(fake, labels, noise))
    real_median = torch.cat(real_gaps).median()
    return {name: summarise(scores, floor, real_median, sets) for name, scores in found.items()}


def summarise(scores: dict[str, list], floor: Floor, real_median: torch.Tensor, sets: int) -> dict[str, float]:
    """One sampler's rounds as its scores (see `judge`)."""
    ratios = np.array(scores["mmd"]) / floor.mmd
    summary = {
        "mmd": float(np.mean(scores["mmd"])),
        "mmd_floor": floor.mmd,
        "mmd_ratio": float(ratios.mean()),
        "mmd_ratio_std": float(ratios.std(ddof=1)) if sets > 1 else math.nan,
        "c2st": float(np.mean(scores["c2st"])),
        "copying": float(torch.cat(scores["sample_gaps"]).median() / real_median),
        "spacing": float(torch.cat(scores["spacings"]).median()) / floor.spacing,
    }
    if scores["on_moon"]:
        summary["on_moon"] = float(np.mean(scores["on_moon"]))
    return summary


def prior_sampler(network: VAE) -> Sampler:
    """The model's samples from its prior: N(0, I), or its VampPrior."""
    return lambda n, generator, labels: network.sample(n, labels, generator).numpy()


def posterior_sampler(network: VAE, bank: LatentBank) -> Sampler:
    """Decoded draws of the aggregate posterior (a random bank entry's q(z|x), noise scaled by eps_w)."""
    return lambda n, generator, labels: network.sample_posterior(bank, n, labels, generator).numpy()


def mixture_sampler(network: VAE, mixture: dict[str, torch.Tensor]) -> Sampler:
    """Decoded draws of a latent mixture fitted by `density.fit_mixture`."""

    @torch.inference_mode()
    def sample(n: int, generator: torch.Generator, labels: torch.Tensor | None) -> np.ndarray:
        return network.draw_point(sample_mixture(mixture, n, labels, generator), labels, generator).numpy()

    return sample
