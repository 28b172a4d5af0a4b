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

Fitting is scikit-learn's GaussianMixture (k-means++ seeds, EM, its tolerances),
written as batched torch operations over the components: scikit-learn loops over them
in Python, and its fits took two thirds of a tuning trial's measurements; its k-means++
seeds are drawn here the way scikit-learn draws them, so a fit imports no scikit-learn
(only one too large for fit_em is handed to scikit-learn itself). The result is plain
tensors (`torch.save` and `torch.load(weights_only=True)` round-trip it) and sampling is
pure torch with a seeded generator, so a logged model that samples from it needs no
scikit-learn.

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

import math
from dataclasses import dataclass

import numpy as np
import torch

COMPONENTS = (1, 2, 5, 10, 20, 50, 100)  # candidates in increasing order, scored on the validation latents
# in principal coordinates; "diag" fits each component along the principal axes. Full: samples as spread
# as diagonal ones' or more (spacing 0.82 vs 0.74 with the defaults), fitted in about a second (bench/sources.py)
COVARIANCE = "full"
SUBSPACE_TOLERANCE = 1e-3  # principal directions spread less than this share of the widest one are dropped
REG_COVAR = 1e-6  # added to covariance diagonals; scikit-learn's default
MAX_ITER, TOL = 100, 1e-3  # EM steps at most, and the change of mean log-likelihood that ends it: scikit-learn's
# fit_em holds each point's outer product (n x r^2 floats): past this many bytes, scikit-learn fits (a component
# at a time)
EM_BYTES = 32 * 2**20
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


@dataclass(frozen=True)
class Gaussians:
    """A fitted mixture under scikit-learn's names: weights (k), means (k, r), covariances (k, r, r) or (k, r)."""

    weights_: np.ndarray
    means_: np.ndarray
    covariances_: np.ndarray

    @property
    def n_components(self) -> int:
        return len(self.weights_)

    def score_samples(self, points: np.ndarray) -> np.ndarray:
        """Each point's log-likelihood under the mixture."""
        weights, means, covariances = (
            torch.from_numpy(each) for each in (self.weights_, self.means_, self.covariances_)
        )
        return _log_joint(torch.from_numpy(points), weights, means, covariances).logsumexp(dim=1).numpy()


def _log_joint(
    points: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor
) -> torch.Tensor:
    """log w_k + log N(x_n | mean_k, cov_k) as an (n, k) table; full covariances are (k, r, r), diagonal (k, r).

    Squared distances expand into matrix products, x'Ax - 2 x'A m + m'A m with A the
    precision, so no (k, n, r) tensor is made: these fits are per-op overhead, not arithmetic.
    """
    n, r = points.shape
    if covariances.dim() == 3:
        factor, info = torch.linalg.cholesky_ex(covariances)
        if info.any():
            raise ValueError("a component's covariance is not positive definite; try fewer components")
        precision = torch.cholesky_inverse(factor)  # (k, r, r)
        pulled = (precision @ means[:, :, None]).squeeze(2)  # A m, (k, r)
        quadratic = _outer(points) @ precision.reshape(-1, r * r).T  # x'Ax, (n, k)
        distance = quadratic - 2 * points @ pulled.T + (means * pulled).sum(dim=1)
        log_det = 2 * factor.diagonal(dim1=1, dim2=2).log().sum(dim=1)
    else:
        inverse = 1 / covariances  # (k, r)
        distance = points.pow(2) @ inverse.T - 2 * points @ (means * inverse).T + (means.pow(2) * inverse).sum(dim=1)
        log_det = covariances.log().sum(dim=1)
    return -0.5 * (r * math.log(2 * math.pi) + log_det + distance) + weights.log()


def _outer(points: torch.Tensor) -> torch.Tensor:
    """Each point's outer product with itself, flattened: (n, r * r)."""
    return (points[:, :, None] * points[:, None]).reshape(len(points), -1)


def _m_step(points: torch.Tensor, resp: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Component counts, means and (regularised) covariances from responsibilities (n, k), as matrix products."""
    counts = resp.sum(dim=0) + 10 * torch.finfo(resp.dtype).eps
    means = resp.T @ points / counts[:, None]
    n, r = points.shape
    if full:
        second = (resp.T @ _outer(points)).reshape(-1, r, r)
        covariances = second / counts[:, None, None] - means[:, :, None] * means[:, None]
        return counts, means, covariances + REG_COVAR * torch.eye(r, dtype=points.dtype)
    return counts, means, resp.T @ points.pow(2) / counts[:, None] - means.pow(2) + REG_COVAR


def kmeans_plusplus(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The indices of k seed points: scikit-learn's `kmeans_plusplus(points, k, random_state=seed)`, step for step.

    The same draws from the same RandomState and the same float64 arithmetic give the same
    seeds (tests/test_density.py checks them against scikit-learn's), without importing
    scikit-learn (0.6 s) into every run that fits a mixture.
    """
    rng = np.random.RandomState(seed)
    n = len(points)
    if n < k:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}.")
    weight = np.ones(n)
    norms = np.einsum("ij,ij->i", points, points)
    local_trials = 2 + int(np.log(k))  # Arthur and Vassilvitskii's greedy k-means++

    def distances(rows: np.ndarray) -> np.ndarray:  # squared, from each of `rows` to every point
        chosen = points[rows]
        found = -2 * (chosen @ points.T)
        found += np.einsum("ij,ij->i", chosen, chosen)[:, None]
        found += norms[None, :]
        return np.maximum(found, 0, out=found)

    indices = np.full(k, -1, dtype=int)
    indices[0] = rng.choice(n, p=weight / weight.sum())
    closest = distances(indices[:1])
    potential = closest @ weight
    for c in range(1, k):
        draws = rng.uniform(size=local_trials) * potential
        candidates = np.searchsorted(np.cumsum(weight * closest), draws)
        np.clip(candidates, None, closest.size - 1, out=candidates)
        to_candidates = np.minimum(closest, distances(candidates))
        potentials = to_candidates @ weight.reshape(-1, 1)
        best = np.argmin(potentials)
        potential, closest = potentials[best], to_candidates[best]
        indices[c] = candidates[best]
    return indices


def fit_em(points: np.ndarray, k: int, seed: int, covariance: str = COVARIANCE) -> Gaussians:
    """scikit-learn's GaussianMixture(k, covariance_type, reg_covar, init_params="k-means++", random_state=seed).fit.

    Each component starts at one k-means++ seed point; EM runs until the mean log-likelihood changes by less than TOL.
    """
    x = torch.from_numpy(points)
    seeds = kmeans_plusplus(points, k, seed)
    resp = torch.zeros(len(x), k, dtype=x.dtype)
    resp[torch.from_numpy(seeds), torch.arange(k)] = 1.0
    counts, means, covariances = _m_step(x, resp, covariance == "full")
    weights, previous = counts / len(x), -math.inf  # the seeds' weights sum to k / n, as scikit-learn's do
    for _ in range(MAX_ITER):
        log_joint = _log_joint(x, weights, means, covariances)
        log_norm = log_joint.logsumexp(dim=1, keepdim=True)
        counts, means, covariances = _m_step(x, (log_joint - log_norm).exp(), covariance == "full")
        weights = counts / counts.sum()
        bound = log_norm.mean().item()
        if abs(bound - previous) < TOL:
            break
        previous = bound
    return Gaussians(weights.numpy(), means.numpy(), covariances.numpy())


def _fit_sklearn(points: np.ndarray, k: int, seed: int, covariance: str) -> Gaussians:
    """What fit_em computes, by scikit-learn itself: slower, but a component's points at a time."""
    from sklearn.mixture import GaussianMixture

    options = {"reg_covar": REG_COVAR, "max_iter": MAX_ITER, "tol": TOL, "init_params": INIT, "random_state": seed}
    mixture = GaussianMixture(k, covariance_type=covariance, **options).fit(points)
    return Gaussians(mixture.weights_, mixture.means_, mixture.covariances_)


def fit_gaussians(
    train: np.ndarray, val: np.ndarray, seed: int, components: tuple[int, ...], covariance: str
) -> Gaussians:
    """The fewest components whose validation log-likelihood is within a standard error of the best's.

    The error is that of the per-point difference to the best candidate, so the choice
    does not pay for a gain that the validation set's sampling noise could explain
    (plain argmax picks 2 components for one Gaussian). Candidates stop at the first
    that does not beat the best so far that way, which spares the largest, slowest fits.
    """
    candidates, scores = [], []
    fit = fit_em if covariance == "diag" or train.nbytes * train.shape[1] <= EM_BYTES else _fit_sklearn
    for k in components:
        if k > len(train):
            break
        mixture = fit(train, k, seed, covariance)
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
    state: dict[str, torch.Tensor], n: int, labels: torch.Tensor | None = None, rng: torch.Generator | None = None
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
        component[rows] = torch.multinomial(state["weights"][m], len(rows), replacement=True, generator=rng)
    eps = torch.randn((n, state["factors"].shape[3]), generator=rng)
    noise = torch.randn((n, state["means"].shape[2]), generator=rng)
    z = state["means"][mixture, component] + state["noise"][mixture] * noise
    factors = state["factors"].flatten(0, 1)  # (M * K, d, r): one row per (mixture, component)
    group = mixture * state["factors"].shape[1] + component
    counts = torch.bincount(group, minlength=len(factors)).tolist()
    rows_by_group = group.argsort(stable=True).split(counts)  # rows sorted by group, then one slice per group
    for rows, factor in zip(rows_by_group, factors, strict=True):
        if len(rows):
            z[rows] += eps[rows] @ factor.T
    return z
