"""How good is a sampler? Its samples judged against the two-moons distribution itself, with their uncertainty.

- MMD: a set's squared MMD to the distribution in closed form (`distribution`), over
  what an exact sampler scores in expectation, at three kernel widths: `mmd_wide`,
  `mmd_mid`, `mmd_fine` (about 1 for an exact sampler). `mmd_summary`, their geometric
  mean, is what decisions compare (`clearly_worse`).
- C2ST: held-out accuracy of a k-NN classifier telling a set from exact draws (0.5: alike).
- Copying: median distance from a sample to its nearest training point, over the same for
  exact draws. About 1: new points; below 1: copies of the training data (or a
  distribution narrower than the data's, which also sits closer to training points).
- Spacing: median distance from a sample to its nearest other sample, over the same in a
  set of exact draws. Below 1: clumps or filaments; above 1: too dispersed.
- On moon (conditional samplers): the share of samples drawn for moon k that the
  Bayes-optimal moon classifier puts on moon k, averaged over the moons (an exact
  sampler scores the Bayes accuracy, 0.991 at noise 0.15).
Every score is a mean over sets of N_POINTS samples, with its standard error over the
sets (`_se`): the MMD over every set, the others over the first few (`judge`).

Pure: torch and numpy arrays in, floats out; no MLflow.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial import cKDTree

from moonvae.sampling.distribution import SCALES, exact_moons, mmd_ratios, moon_log_likelihood, rng

if TYPE_CHECKING:  # judging needs no scikit-learn: only `knn`'s callers (analysis) import it
    from sklearn.neighbors import KNeighborsClassifier

N_POINTS = 2000  # points per set: the ratios grow with n (n * MMD^2 / (1 - E_PP k)), so every figure uses 2000
FULL_SETS = 64  # sets of analyse's judgement: an exact sampler's summary to ~4.5%, a default model's to 2-3%
CHECK_SETS, FULL_CHECK_SETS = 4, 16  # sets of C2ST, copying, spacing and on-moon: a run's, and analyse's
SCORES = ("mmd_wide", "mmd_mid", "mmd_fine", "mmd_summary", "c2st", "copying", "spacing", "on_moon")
SIGNIFICANCE = 2.0  # standard errors of a difference that make it one (two-sided, about 95%)
MIN_SETS = 4  # sets before a judgement may stop at its target error: fewer estimate the error too roughly

# independent random streams, so no two draws of the protocol ever share a seed (distribution's is 0)
REFERENCE_STREAM, SAMPLE_STREAM = 1, 2

# sample(n, rng, labels) -> n x 2 points; labels (n moon labels) only for conditional samplers
Sampler = Callable[[int, torch.Generator, torch.Tensor | None], np.ndarray]


def exact_sampler(noise: float) -> Sampler:
    """A perfect sampler: its scores are what ideal looks like (1, 0.5, 1, 1 and the Bayes on-moon accuracy)."""

    def sample(n: int, rng: torch.Generator, labels: torch.Tensor | None = None) -> np.ndarray:
        return exact_moons(n, noise, rng, labels)[0].numpy()

    return sample


def nearest_distance(x: torch.Tensor, tree: cKDTree) -> np.ndarray:
    """Distance from each row of x to its nearest point of the tree (exact, float64)."""
    return tree.query(x.double().numpy())[0]


def nearest_other(x: torch.Tensor) -> np.ndarray:
    """Distance from each row of x to its nearest other row (its second neighbour: the first is itself)."""
    points = x.double().numpy()
    return cKDTree(points).query(points, k=2)[0][:, 1]


def knn_k(n_train: int) -> int:
    """k = sqrt(n): consistent as n grows, smooth enough for 2-D densities."""
    return max(1, round(math.sqrt(n_train)))


def knn(n_train: int) -> KNeighborsClassifier:
    """scikit-learn's k-NN classifier with `knn_k(n_train)` neighbours."""
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=knn_k(n_train))


def c2st_accuracy(real: np.ndarray, generated: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a k-NN classifier telling real from generated points (0.5 = indistinguishable).

    Half of each kind, drawn at random, is held out; the other half votes, by its k
    nearest points (a k-d tree; a tie goes to 'real'): what `knn(n)` predicts, in a third
    of its time.
    """
    shuffle = np.random.default_rng(seed).permutation
    x, origin, held = np.concatenate([real, generated]), np.repeat([0, 1], [len(real), len(generated)]), []
    for start, size in ((0, len(real)), (len(real), len(generated))):
        held.append(start + shuffle(size)[: size // 2])
    is_held = np.zeros(len(x), dtype=bool)
    is_held[np.concatenate(held)] = True
    k = knn_k(int((~is_held).sum()))
    neighbours = cKDTree(x[~is_held]).query(x[is_held], k=k)[1].reshape(-1, k)
    predicted = origin[~is_held][neighbours].sum(axis=1) > k / 2
    return float(np.mean(predicted == origin[is_held]))


def on_moon_share(x: torch.Tensor, labels: torch.Tensor, noise: float) -> float:
    """Share of points the Bayes classifier puts on their requested moon, averaged over the moons requested."""
    on = moon_log_likelihood(x, noise).argmax(dim=1) == labels
    return float(np.mean([on[labels == k].float().mean().item() for k in labels.unique()]))


def judge(
    sample: Sampler,
    train_x: np.ndarray,
    noise: float,
    *,
    sets: int,
    check_sets: int = CHECK_SETS,
    n: int = N_POINTS,
    seed: int = 0,
    conditional: bool = False,
    target_error: float | None = None,
) -> dict[str, float]:
    """A sampler's scores, unprefixed: each of SCORES (on_moon only when conditional), its standard error (`_se`),
    and the sets behind them (`sets` for the MMD, `check_sets` for the others).

    Each set asks the sampler for n points: the MMD compares them with the distribution
    itself, and on the first `check_sets` sets n exact draws are the reference of C2ST,
    copying and spacing (their standard errors are small by then: 0.006 for C2ST at 4
    sets, against 0.05 of margin to its threshold). A conditional sampler is asked for
    labels drawn as the data's are, Bernoulli(1/2), independently of the reference's.
    `train_x` holds the training points, `noise` the data's noise. `sets` sets, or with
    `target_error` (a relative standard error of the MMD summary) as many as reach it,
    at least MIN_SETS and at most `sets`. Standard errors are NaN for one set. Same
    arguments, same numbers: samplers judged with one seed meet the same references.
    """
    options = dict(sets=sets, check_sets=check_sets, n=n, seed=seed, conditional=conditional)
    return judge_all({"": sample}, train_x, noise, target_error=target_error, **options)[""]


def judge_all(
    samplers: dict[str, Sampler],
    train_x: np.ndarray,
    noise: float,
    *,
    sets: int,
    check_sets: int = CHECK_SETS,
    n: int = N_POINTS,
    seed: int = 0,
    conditional: bool = False,
    target_error: float | None = None,
) -> dict[str, dict[str, float]]:
    """`judge` of several samplers at once, by name: the same numbers, each reference's own terms computed once.

    Every sampler meets the same references and is asked for the same labels (a fresh
    sample stream per sampler), so their scores compare pairwise; one that reaches
    `target_error` is judged no further while the others go on.
    """
    references = rng(REFERENCE_STREAM, seed)
    draws = {name: rng(SAMPLE_STREAM, seed) for name in samplers}
    train = cKDTree(np.asarray(train_x, dtype=np.float64))
    found: dict[str, dict[str, list]] = {name: defaultdict(list) for name in samplers}
    active = dict(samplers)
    for round_ in range(sets):
        if round_ < check_sets:
            real = exact_moons(n, noise, references)[0]
            real_gap, real_spacing = np.median(nearest_distance(real, train)), np.median(nearest_other(real))
        for name, sample in active.items():
            labels = torch.randint(2, (n,), generator=draws[name]) if conditional else None
            fake = torch.as_tensor(np.asarray(sample(n, draws[name], labels)), dtype=torch.float32)
            if fake.shape != (n, 2) or not torch.isfinite(fake).all():
                raise ValueError(f"the sampler must return {n} finite 2-D points, got shape {tuple(fake.shape)}")
            scores = found[name]
            scores["mmd"].append(mmd_ratios(fake, noise))
            if round_ < check_sets:
                scores["c2st"].append(c2st_accuracy(real.numpy(), fake.numpy(), seed + round_))
                scores["copying"].append(np.median(nearest_distance(fake, train)) / real_gap)
                scores["spacing"].append(np.median(nearest_other(fake)) / real_spacing)
                if conditional:
                    scores["on_moon"].append(on_moon_share(fake, labels, noise))
        if target_error is not None and round_ + 1 >= MIN_SETS:
            active = {name: sample for name, sample in active.items() if not precise(found[name]["mmd"], target_error)}
        if not active:
            break
    return {name: tally(scores) for name, scores in found.items()}


def precise(ratios: list[np.ndarray], target_error: float) -> bool:
    """Whether the MMD summary of these sets carries a relative standard error of at most target_error."""
    summary, error = geometric_summary(np.array(ratios))
    return error <= target_error * summary


def mean_and_error(values: np.ndarray) -> tuple[float, float]:
    """The mean over sets and its standard error (NaN for one set)."""
    error = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return float(values.mean()), float(error)


def geometric_summary(ratios: np.ndarray) -> tuple[float, float]:
    """The geometric mean of the scales' mean ratios (sets x scales in), and its standard error.

    The error by the delta method, from the sets' covariance of the three ratios (they
    share samples, so they move together): the summary's relative error is that of the
    mean of their logarithms.
    """
    means = ratios.mean(axis=0)
    summary = float(np.exp(np.log(means).mean()))
    if len(ratios) < 2:
        return summary, math.nan
    gradient = 1 / (len(means) * means)  # d log(summary) / d mean_k
    variance = gradient @ np.cov(ratios, rowvar=False) @ gradient / len(ratios)
    return summary, summary * math.sqrt(max(float(variance), 0.0))


def tally(scores: dict[str, list]) -> dict[str, float]:
    """One sampler's sets as its scores, their standard errors and the numbers of sets (see `judge`)."""
    ratios = np.array(scores.pop("mmd"))
    found = {"sets": len(ratios), "check_sets": len(scores.get("c2st", []))}
    for index, scale in enumerate(SCALES):
        found[f"mmd_{scale}"], found[f"mmd_{scale}_se"] = mean_and_error(ratios[:, index])
    found["mmd_summary"], found["mmd_summary_se"] = geometric_summary(ratios)
    for name, values in scores.items():
        found[name], found[f"{name}_se"] = mean_and_error(np.array(values, dtype=np.float64))
    return found


def clearly_worse(value: float, error: float, best: float, best_error: float) -> bool:
    """Whether a summary exceeds the best by more than SIGNIFICANCE standard errors of their difference.

    On the log scale, where a summary's standard error is relative: sources or trials
    whose difference is inside the uncertainty are not told apart. A NaN error (one set)
    counts as none.
    """
    relative = [0.0 if math.isnan(e) else e / v for e, v in ((error, value), (best_error, best))]
    return math.log(value / best) > SIGNIFICANCE * math.hypot(*relative)
