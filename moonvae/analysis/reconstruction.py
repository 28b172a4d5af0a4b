"""How well does a trained model reconstruct, and what does it draw? Test error, fresh points, samples for figures.

Reconstruction is measured on the model's own test split and on fresh draws from the
data generator (seeds that training never used). Sample quality is `quality`'s job,
against exact draws of the distribution. Latent moon accuracy: how well the moon can
be read off the latent means, by `quality`'s k-nearest-neighbour classifier.

No MLflow here: torch models and arrays in, floats out.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_moons
from sklearn.model_selection import StratifiedKFold, cross_val_score

from moonvae.config import DataConfig
from moonvae.core.data import MoonsData, Split
from moonvae.core.models import VAE, LatentBank
from moonvae.core.train import loss_terms
from moonvae.metrics import N_EVAL
from moonvae.sampling.quality import knn
from moonvae.sampling.sources import Samples, draw

FRESH_SEED_OFFSET = 1_000_003  # fresh data seeds are data_seed + this + k: never a training seed


def fresh_seed(data_seed: int, k: int) -> int:
    """The k-th fresh data seed: distinct from `data_seed` and from every other k."""
    return data_seed + FRESH_SEED_OFFSET + k


def fresh_moons(config: DataConfig, n: int, seed: int) -> Split:
    """n new points from the generator the model was trained on (same noise), balanced over the moons."""
    x, y = make_moons(n_samples=n, noise=config.noise, random_state=seed)
    return Split(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)))


def latent_moon_folds(bank: LatentBank, seed: int = 0) -> np.ndarray:
    """How well the moon can be read off the latent means: 5-fold k-NN accuracies (0.5 = moons fully overlap).

    Per fold, so a comparison of two models can state its uncertainty.
    """
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return cross_val_score(knn(len(bank.mean) * 4 // 5), bank.mean.numpy(), bank.y.numpy(), cv=folds)


def evaluate_model(
    network: VAE, bank: LatentBank, data: MoonsData, data_config: DataConfig, n: int = N_EVAL, seed: int = 0
) -> tuple[dict[str, float], Samples]:
    """Reconstruction metrics of one model, unprefixed (`test_mse`, `fresh_mse`, ...), and samples for its figures.

    `data` is the model's own split (for test MSE/KL); the fresh metrics use `n` new
    points from the generator with `data_config`'s noise, which are also the reference
    the samples are drawn for. The same arguments give the same numbers.
    """
    network.eval()
    reference = fresh_moons(data_config, n, fresh_seed(data_config.data_seed, 0))
    test, fresh = loss_terms(network, data.test), loss_terms(network, reference)
    metrics = {
        "test_mse": test.mse.item(),
        "test_kl": test.kl.item(),
        "fresh_mse": fresh.mse.item(),
        "fresh_kl": fresh.kl.item(),
    }
    return metrics, draw(network, bank, reference, seed)
