"""How good is a trained model? Test error, and how close its samples come to real moons.

Sample quality is measured, not eyeballed, on fresh draws from the data generator
(seeds that training never used):
- MMD: the (biased, V-statistic) squared maximum mean discrepancy with an RBF
  kernel, exp(-|a-b|^2 / (2 s^2)), the bandwidth s fixed once per evaluation by the
  median heuristic: the median pairwise distance among the real reference points.
  Every statistic of one evaluation shares that kernel, so they compare directly.
  The same statistic between two independent real samples of the same size is the
  floor a perfect model would reach (it is positive: the V-statistic has a bias of
  order 1/n).
- C2ST: a classifier two-sample test. A k-nearest-neighbour classifier (k = sqrt of
  its training size) learns real vs generated on half the points; its accuracy on
  the other half is 0.5 when the two are indistinguishable, 1.0 when disjoint.
- Conditional accuracy (CVAE): the share of samples drawn for label k that a
  classifier trained on real moons assigns to moon k, averaged over both moons.

No MLflow here: torch models and arrays in, floats out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import make_moons
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier

from moonvae.config import DataConfig
from moonvae.data import MoonsData, Split
from moonvae.metrics import N_EVAL
from moonvae.models import VAE, LatentBank
from moonvae.train import evaluate as loss_terms

FRESH_SEED_OFFSET = 1_000_003  # fresh data seeds are data_seed + this + k: never a training seed
BANDWIDTH_POINTS = 1000  # real points the median heuristic looks at


def fresh_seed(data_seed: int, k: int) -> int:
    """The k-th fresh data seed: distinct from `data_seed` and from every other k."""
    return data_seed + FRESH_SEED_OFFSET + k


def fresh_moons(config: DataConfig, n: int, seed: int) -> Split:
    """n new points from the generator the model was trained on (same noise), balanced over the moons."""
    x, y = make_moons(n_samples=n, noise=config.noise, random_state=seed)
    return Split(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)))


def median_bandwidth(x: np.ndarray, max_points: int = BANDWIDTH_POINTS) -> float:
    """The median heuristic: median pairwise Euclidean distance among (the first `max_points` of) x."""
    points = torch.as_tensor(np.asarray(x)[:max_points], dtype=torch.float64)
    distances = torch.pdist(points)
    return float(distances.median())


def _rbf_mean(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> float:
    return float(torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2)).mean())


def mmd(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Biased squared MMD with an RBF kernel of the given bandwidth (>= 0; 0 only if x and y coincide)."""
    a = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    return max(_rbf_mean(a, a, bandwidth) + _rbf_mean(b, b, bandwidth) - 2 * _rbf_mean(a, b, bandwidth), 0.0)


def knn(n_train: int) -> KNeighborsClassifier:
    """k = sqrt(n): consistent as n grows, smooth enough for 2-D densities."""
    return KNeighborsClassifier(n_neighbors=max(1, round(math.sqrt(n_train))))


def c2st_accuracy(real: np.ndarray, generated: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a classifier telling real from generated points (0.5 = indistinguishable)."""
    x = np.concatenate([real, generated])
    origin = np.concatenate([np.zeros(len(real)), np.ones(len(generated))])
    x_fit, x_held, o_fit, o_held = train_test_split(x, origin, test_size=0.5, stratify=origin, random_state=seed)
    return float(knn(len(x_fit)).fit(x_fit, o_fit).score(x_held, o_held))


def moon_classifier(real: Split) -> KNeighborsClassifier:
    """Which moon a point lies on, learnt from real points."""
    return knn(len(real)).fit(real.x.numpy(), real.y.numpy())


def conditional_accuracy(classifier: KNeighborsClassifier, samples: np.ndarray, requested: np.ndarray) -> float:
    """Share of samples the classifier puts on the requested moon, averaged over the moons requested."""
    predicted = classifier.predict(samples)
    return float(np.mean([np.mean(predicted[requested == k] == k) for k in np.unique(requested)]))


def latent_moon_folds(bank: LatentBank, seed: int = 0) -> np.ndarray:
    """How well the moon can be read off the latent means: 5-fold k-NN accuracies (0.5 = moons fully overlap).

    Per fold, so a comparison of two models can state its uncertainty.
    """
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return cross_val_score(knn(len(bank.mean) * 4 // 5), bank.mean.numpy(), bank.y.numpy(), cv=folds)


@dataclass(frozen=True)
class Samples:
    """What an evaluation drew, kept for the figures: real reference points and both kinds of samples."""

    reference: Split  # fresh real points; their labels are the labels requested from the model
    prior: np.ndarray  # decoded z ~ N(0, I)
    posterior: np.ndarray  # decoded z from the aggregate posterior (the training bank, eps_w noise)


def draw(network: VAE, bank: LatentBank, reference: Split, seed: int) -> Samples:
    """One sample per reference point, for the reference point's label, from the prior and the aggregate posterior."""
    labels = reference.y if network.n_conditions else None  # the VAE samples from the whole bank, blind to labels
    prior = network.sample(len(reference), labels, torch.Generator().manual_seed(seed)).numpy()
    posterior = network.sample_posterior(bank, len(reference), labels, torch.Generator().manual_seed(seed))
    return Samples(reference, prior, posterior.numpy())


def evaluate_model(
    network: VAE, bank: LatentBank, data: MoonsData, data_config: DataConfig, n: int = N_EVAL, seed: int = 0
) -> tuple[dict[str, float], Samples]:
    """All metrics of one model, unprefixed (`test_mse`, `prior_mmd`, ...), and the samples they were computed on.

    `data` is the model's own split (for test MSE/KL); every other number uses fresh
    draws of `n` points from the generator with `data_config`'s noise. The same
    arguments give the same numbers.
    """
    network.eval()
    reference = fresh_moons(data_config, n, fresh_seed(data_config.data_seed, 0))
    second_real = fresh_moons(data_config, n, fresh_seed(data_config.data_seed, 1))
    classifier_data = fresh_moons(data_config, n, fresh_seed(data_config.data_seed, 2))
    samples = draw(network, bank, reference, seed)
    real = reference.x.numpy()
    bandwidth = median_bandwidth(real)
    test, fresh = loss_terms(network, data.test), loss_terms(network, reference)
    classifier = moon_classifier(classifier_data)
    metrics = {
        "test_mse": test.mse.item(),
        "test_kl": test.kl.item(),
        "fresh_mse": fresh.mse.item(),
        "fresh_kl": fresh.kl.item(),
        "mmd_bandwidth": bandwidth,
        "mmd_floor": mmd(real, second_real.x.numpy(), bandwidth),
        "prior_mmd": mmd(real, samples.prior, bandwidth),
        "posterior_mmd": mmd(real, samples.posterior, bandwidth),
        "c2st_floor_accuracy": c2st_accuracy(real, second_real.x.numpy(), seed),
        "prior_c2st_accuracy": c2st_accuracy(real, samples.prior, seed),
        "posterior_c2st_accuracy": c2st_accuracy(real, samples.posterior, seed),
        "moon_classifier_accuracy": float(classifier.score(real, reference.y.numpy())),
    }
    if network.n_conditions:
        labels = reference.y.numpy()
        metrics["prior_conditional_accuracy"] = conditional_accuracy(classifier, samples.prior, labels)
        metrics["posterior_conditional_accuracy"] = conditional_accuracy(classifier, samples.posterior, labels)
    return metrics, samples
