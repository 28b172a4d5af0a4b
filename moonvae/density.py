"""A latent density fitted after training, to sample from instead of the prior or the raw aggregate posterior.

The prior N(0, I) is not where the decoder's inputs lay when eps_w or beta is small,
and the aggregate posterior only ever revisits the training points. A Gaussian mixture
fitted to the training latents' means (one per moon for the CVAE) covers the same
region and fills the gaps between them. The number of components is chosen by the
validation latents' log-likelihood.

Fitting uses scikit-learn; the result is plain tensors (`torch.save` and
`torch.load(weights_only=True)` round-trip it) and sampling is pure torch with a
seeded generator, so a logged model that samples from it needs no scikit-learn.

State keys (M mixtures, K the most components of any of them, d latent dims):
- labels (M,) int64: the label each mixture belongs to; empty for one unconditional mixture
- components (M,) int64: components each mixture uses (the rest of its rows are padding)
- weights (M, K): mixing weights, 0 on padding
- means (M, K, d)
- scale_tril (M, K, d, d) with full covariances, or scales (M, K, d) with diagonal ones
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture  # imported where fitted: sampling must not need scikit-learn

COMPONENTS = (1, 2, 5, 10, 20, 50, 100)  # candidates, each fitted and scored on the validation latents
# diagonal: samples as good as full covariances' in 2, 8 and 128 latent dims, fitted 10-50x faster
# (full in 128 dims: 26 s for the candidates); bench/sources.py
COVARIANCE = "diag"
REG_COVAR = 1e-6  # added to covariance diagonals; scikit-learn's default


def fit_gaussians(
    train: np.ndarray, val: np.ndarray, seed: int, components: tuple[int, ...], covariance: str
) -> GaussianMixture:
    """The fewest components whose validation log-likelihood is within a standard error of the best's.

    The error is that of the per-point difference to the best candidate, so the choice
    does not pay for a gain that the validation set's sampling noise could explain
    (plain argmax picks 2 components for one Gaussian).
    """
    from sklearn.mixture import GaussianMixture

    candidates = [
        GaussianMixture(k, covariance_type=covariance, reg_covar=REG_COVAR, random_state=seed).fit(train)
        for k in components
        if k <= len(train)
    ]
    if not candidates:
        raise ValueError(f"too few latents ({len(train)}) for {min(components)} components")
    scores = np.stack([mixture.score_samples(val) for mixture in candidates])
    gaps = scores[scores.mean(axis=1).argmax()] - scores
    tolerance = gaps.std(axis=1) / np.sqrt(len(val))
    return candidates[int(np.flatnonzero(gaps.mean(axis=1) <= tolerance)[0])]


def fit_mixture(
    train_means: torch.Tensor,
    train_y: torch.Tensor | None,
    val_means: torch.Tensor,
    val_y: torch.Tensor | None,
    *,
    seed: int,
    components: tuple[int, ...] = COMPONENTS,
    covariance: str = COVARIANCE,
) -> dict[str, torch.Tensor]:
    """A mixture per label (one for all when `train_y` is None), as tensors for `sample_mixture`."""
    if train_y is None:
        labels, groups = [], [(train_means, val_means)]
    else:
        labels = sorted(int(label) for label in train_y.unique())
        groups = [(train_means[train_y == label], val_means[val_y == label]) for label in labels]
    fitted = [
        fit_gaussians(train.double().numpy(), val.double().numpy(), seed, components, covariance)
        for train, val in groups
    ]
    most, dim = max(m.n_components for m in fitted), train_means.shape[1]
    weights, means = torch.zeros(len(fitted), most), torch.zeros(len(fitted), most, dim)
    scales = torch.zeros(len(fitted), most, dim, dim) if covariance == "full" else torch.zeros(len(fitted), most, dim)
    for row, mixture in enumerate(fitted):
        k = mixture.n_components
        weights[row, :k] = torch.from_numpy(mixture.weights_)
        means[row, :k] = torch.from_numpy(mixture.means_)
        if covariance == "full":
            scales[row, :k] = torch.from_numpy(np.linalg.cholesky(mixture.covariances_))
        else:
            scales[row, :k] = torch.from_numpy(np.sqrt(mixture.covariances_))
    return {
        "labels": torch.tensor(labels, dtype=torch.int64),
        "components": torch.tensor([m.n_components for m in fitted], dtype=torch.int64),
        "weights": weights,
        "means": means,
        "scale_tril" if covariance == "full" else "scales": scales,
    }


def sample_mixture(
    state: dict[str, torch.Tensor], n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """n latents (n x d) from the mixture; with per-label mixtures, row i from the mixture of labels[i].

    An unconditional mixture ignores `labels`, as the VAE does.
    """
    if len(state["labels"]) == 0:
        mixture = torch.zeros(n, dtype=torch.int64)
    elif labels is None or len(labels) != n:
        raise ValueError("a per-label mixture needs one label per sample")
    else:
        known = state["labels"]
        mixture = (labels.reshape(-1, 1) == known).long().argmax(dim=1)
        if not (known[mixture] == labels).all():
            raise ValueError(f"the mixture knows only the labels {known.tolist()}")
    component = torch.empty(n, dtype=torch.int64)
    for m in mixture.unique():
        rows = (mixture == m).nonzero().squeeze(1)
        component[rows] = torch.multinomial(state["weights"][m], len(rows), replacement=True, generator=generator)
    eps = torch.randn((n, state["means"].shape[2]), generator=generator)
    z = state["means"][mixture, component].clone()
    if "scales" in state:
        return z + state["scales"][mixture, component] * eps
    for m, k in torch.stack([mixture, component], dim=1).unique(dim=0).tolist():
        rows = ((mixture == m) & (component == k)).nonzero().squeeze(1)
        z[rows] += eps[rows] @ state["scale_tril"][m, k].T
    return z
