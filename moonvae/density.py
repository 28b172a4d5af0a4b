"""A latent density fitted after training, to sample from instead of the prior or the raw aggregate posterior.

The prior N(0, I) is not where the decoder's inputs lay when eps_w or beta is small,
and the aggregate posterior only ever revisits the training points. A Gaussian mixture
fitted to the training latents' means (one per moon for the CVAE) covers the same
region and fills the gaps between them. The number of components is chosen by the
validation latents' log-likelihood.

A mixture of the means alone is too tight: decoded, its samples sit 0.7-0.9x as far
apart as real points. Given the noise the decoder saw around each mean in training
(eps_w * std of q(z|x)), the mixture adds that noise, per dimension at its root mean
square over the training points, and its samples are as spread as the data's
(bench/sources.py).

The means lie in an affine subspace of at most the encoder's last hidden width (8
dimensions of 128 with the defaults), so the mixture is fitted there, in principal
coordinates, and its samples stay there. Diagonal covariances over all 128 dimensions
spill out of the subspace and decode to clumps (spacing 0.2x the data's); full ones
over all 128 take 5x longer to fit (3 s for up to 50 components, against 0.5 s).

Fitting uses scikit-learn; the result is plain tensors (`torch.save` and
`torch.load(weights_only=True)` round-trip it) and sampling is pure torch with a
seeded generator, so a logged model that samples from it needs no scikit-learn.

State keys (M mixtures, K the most components of any of them, d latent dims, r the
widest subspace); a component's latents are mean + factor @ eps + noise * eps', with
eps ~ N(0, I_r) and eps' ~ N(0, I_d):
- labels (M,) int64: the label each mixture belongs to; empty for one unconditional mixture
- components (M,) int64: components each mixture uses (the rest of its rows are padding)
- weights (M, K): mixing weights, 0 on padding
- means (M, K, d)
- factors (M, K, d, r): covariance factors (covariance = factor @ factor.T), zero-padded
- noise (M, d): the decoder's training noise per dimension; zeros when fitted without it
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture  # imported where fitted: sampling must not need scikit-learn

COMPONENTS = (1, 2, 5, 10, 20, 50, 100)  # candidates in increasing order, scored on the validation latents
# in principal coordinates; "diag" fits each component along the principal axes. Full: samples as spread
# as diagonal ones' or more (spacing 0.82 vs 0.74 with the defaults), fitted in about a second (bench/sources.py)
COVARIANCE = "full"
SUBSPACE_TOLERANCE = 1e-3  # principal directions spread less than this share of the widest one are dropped
REG_COVAR = 1e-6  # added to covariance diagonals; scikit-learn's default
# EM starts from k-means++ seeds rather than a full k-means: the default models' fits took half the time (0.08-0.11 s
# against 0.17-0.22) and their samples scored alike (MMD ratio 1.4 vs 1.8 VAE, 2.3 vs 2.2 CVAE, +-0.3-0.5, 16 sets)
INIT = "k-means++"


def principal_subspace(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and orthonormal basis (d x r) of the directions the points spread along."""
    centre = points.mean(axis=0)
    _, spread, directions = np.linalg.svd(points - centre, full_matrices=False)
    return centre, directions[: max(1, int((spread > SUBSPACE_TOLERANCE * spread[0]).sum()))].T


def significant_gain(gaps: np.ndarray) -> bool:
    """Whether per-point log-likelihood gains are positive by more than their standard error."""
    return gaps.mean() > gaps.std() / np.sqrt(len(gaps))


def fit_gaussians(
    train: np.ndarray, val: np.ndarray, seed: int, components: tuple[int, ...], covariance: str
) -> GaussianMixture:
    """The fewest components whose validation log-likelihood is within a standard error of the best's.

    The error is that of the per-point difference to the best candidate, so the choice
    does not pay for a gain that the validation set's sampling noise could explain
    (plain argmax picks 2 components for one Gaussian). Candidates stop at the first
    that does not beat the best so far that way, which spares the largest, slowest fits.
    """
    from sklearn.mixture import GaussianMixture

    candidates, scores = [], []
    for k in components:
        if k > len(train):
            break
        mixture = GaussianMixture(
            k, covariance_type=covariance, reg_covar=REG_COVAR, init_params=INIT, random_state=seed
        ).fit(train)
        candidates.append(mixture)
        scores.append(mixture.score_samples(val))
        best = max(scores[:-1], key=np.mean, default=None)
        if best is not None and not significant_gain(scores[-1] - best):
            break
    if not candidates:
        raise ValueError(f"too few latents ({len(train)}) for {min(components)} components")
    best = max(scores, key=np.mean)
    return next(c for c, score in zip(candidates, scores, strict=True) if not significant_gain(best - score))


def training_noise(logvar: torch.Tensor, eps_w: float) -> torch.Tensor:
    """The std of the noise the decoder saw around each mean in training: z = mean + eps_w * eps * std."""
    return eps_w * torch.exp(0.5 * logvar)


def fit_mixture(
    train_means: torch.Tensor,
    train_y: torch.Tensor | None,
    val_means: torch.Tensor,
    val_y: torch.Tensor | None,
    *,
    seed: int,
    train_noise: torch.Tensor | None = None,
    components: tuple[int, ...] = COMPONENTS,
    covariance: str = COVARIANCE,
) -> dict[str, torch.Tensor]:
    """A mixture per label (one for all when `train_y` is None), as tensors for `sample_mixture`.

    `train_noise` (N x d, optional): the std of the noise the decoder saw around each
    training mean, eps_w * exp(logvar / 2); the mixture's samples then carry it too.
    """
    if train_noise is None:
        train_noise = torch.zeros_like(train_means)
    if train_y is None:
        labels, groups = [], [(train_means, val_means, train_noise)]
    else:
        labels = sorted(int(label) for label in train_y.unique())
        groups = [(train_means[train_y == k], val_means[val_y == k], train_noise[train_y == k]) for k in labels]
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    fitted = []
    with threadpool_limits(1):  # small matrices: two BLAS threads made the fit 10x slower on 2 busy cores
        for train, val, _ in groups:
            centre, basis = principal_subspace(train.double().numpy())
            coordinates = [(points.double().numpy() - centre) @ basis for points in (train, val)]
            fitted.append((centre, basis, fit_gaussians(*coordinates, seed, components, covariance)))
    most = max(mixture.n_components for _, _, mixture in fitted)
    widest, dim = max(basis.shape[1] for _, basis, _ in fitted), train_means.shape[1]
    weights, means = torch.zeros(len(fitted), most), torch.zeros(len(fitted), most, dim)
    factors = torch.zeros(len(fitted), most, dim, widest)
    for row, (centre, basis, mixture) in enumerate(fitted):
        k, r = mixture.n_components, basis.shape[1]
        weights[row, :k] = torch.from_numpy(mixture.weights_)
        means[row, :k] = torch.from_numpy(centre + mixture.means_ @ basis.T)
        if covariance == "full":
            local = np.linalg.cholesky(mixture.covariances_)
        else:
            local = np.sqrt(mixture.covariances_)[:, None, :] * np.eye(r)
        factors[row, :k, :, :r] = torch.from_numpy(basis @ local)
    return {
        "labels": torch.tensor(labels, dtype=torch.int64),
        "components": torch.tensor([mixture.n_components for _, _, mixture in fitted], dtype=torch.int64),
        "weights": weights,
        "means": means,
        "factors": factors,
        "noise": torch.stack([noise.pow(2).mean(dim=0).sqrt() for _, _, noise in groups]).float(),
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
    eps = torch.randn((n, state["factors"].shape[3]), generator=generator)
    noise = torch.randn((n, state["means"].shape[2]), generator=generator)
    z = state["means"][mixture, component] + state["noise"][mixture] * noise
    for m, k in torch.stack([mixture, component], dim=1).unique(dim=0).tolist():
        rows = ((mixture == m) & (component == k)).nonzero().squeeze(1)
        z[rows] += eps[rows] @ state["factors"][m, k].T
    return z
