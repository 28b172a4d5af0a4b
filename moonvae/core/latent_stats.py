"""How much of its latent code a VAE uses: active units and the mutual information I(x; z).

Posterior collapse is the latent carrying (almost) nothing about x. Two standard
measures say how far a model has gone there, from the posteriors of a set of
points (a `LatentBank`: means and log-variances, N x d):

- active units (Burda et al. 2016): a unit is active when its posterior mean
  varies over the data; none active is full collapse. Counts units, not bits.
- I(x; z) under q = E_x[KL(q(z|x) || q(z))], q(z) the aggregate posterior (the
  mixture of the N posteriors): how many nats the code keeps about which point
  it came from. It lies in [0, log N], so compare it only at equal N.

The models sample z = mean + eps_w * eps * std, so the posterior the decoder is
trained on is q(z|x) = N(mean, (eps_w * std)^2): both measures take eps_w.
Pure torch; no MLflow, no Optuna.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

ACTIVITY_THRESHOLD = 0.01  # Burda et al.: a unit is active when its posterior mean's variance exceeds this
MI_POINTS = 2000  # posteriors the I(x; z) estimate uses at most (a seeded subsample beyond); it is <= log of this
CHUNK_ROWS = 512  # sampled z per block of the N x N log-density matrix: 512 x 2000 doubles = 8 MB


class Activity(NamedTuple):
    count: int  # active latent units
    fraction: float  # of latent_dim


def active_units(mean: torch.Tensor, eps_w: float = 1.0, threshold: float = ACTIVITY_THRESHOLD) -> Activity:
    """Latent units whose posterior mean varies over the data by more than `threshold`, in units of the sampling noise.

    Burda's rule compares Var_x(mean) with 0.01 on the scale of the prior, N(0, 1),
    which is the scale of the noise at eps_w = 1. With a smaller eps_w the noise
    shrinks and so can the means while keeping the same information, so the
    variance is taken of mean / eps_w: the rule, unchanged, in the noise's units.
    """
    if mean.ndim != 2 or len(mean) < 2:
        raise ValueError(f"need the posterior means of two points or more as an N x d tensor, got {tuple(mean.shape)}")
    variance = (mean.double() / eps_w).var(dim=0, correction=0)
    count = int((variance > threshold).sum())
    return Activity(count, count / mean.shape[1])


def _log_density(z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(z_i; mean_i, diag var_i) for matching rows."""
    return -0.5 * ((z - mean).pow(2) / var + torch.log(2 * math.pi * var)).sum(dim=1)


def mutual_information(
    mean: torch.Tensor, logvar: torch.Tensor, eps_w: float = 1.0, seed: int = 0, max_points: int = MI_POINTS
) -> float:
    """I(x; z) in nats under q(z|x) = N(mean, (eps_w * std)^2), q(z) the mixture of the posteriors.

    One z per point from its own posterior (seeded); log q(z) by log-sum-exp over
    all N posteriors, in blocks of rows so memory stays O(CHUNK_ROWS x N). Each
    point's own term is exact and inside the sum, so every term, and the estimate,
    is at most log N; posteriors that ignore x give 0. Beyond `max_points` points a
    seeded subsample is used, so estimates on different data sizes stay comparable.
    """
    if mean.shape != logvar.shape or mean.ndim != 2 or len(mean) < 2:
        raise ValueError(f"need means and log-variances of the same N x d shape, N >= 2; got {tuple(mean.shape)}")
    generator = torch.Generator().manual_seed(seed)
    mean, logvar = mean.double(), logvar.double()
    if len(mean) > max_points:
        keep = torch.randperm(len(mean), generator=generator)[:max_points]
        mean, logvar = mean[keep], logvar[keep]
    n = len(mean)
    var = eps_w**2 * logvar.exp()
    z = mean + torch.randn(mean.shape, generator=generator, dtype=torch.float64) * var.sqrt()
    own = _log_density(z, mean, var)
    # sum_d (z - m_j)^2 / v_j expanded as z^2 . (1/v_j) - 2 z . (m_j / v_j) + sum_d m_j^2 / v_j: two matrix products
    precision = 1 / var
    scaled_mean = mean * precision
    constant = (mean.pow(2) * precision + torch.log(2 * math.pi * var)).sum(dim=1)
    log_mixture = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, CHUNK_ROWS):
        block = z[start : start + CHUNK_ROWS]
        rows = torch.arange(len(block))
        log_density = -0.5 * (block.pow(2) @ precision.T - 2 * block @ scaled_mean.T + constant)
        log_density[rows, start + rows] = own[start : start + CHUNK_ROWS]  # exact, not a difference of large terms
        log_mixture[start : start + CHUNK_ROWS] = torch.logsumexp(log_density, dim=1) - math.log(n)
    return float((own - log_mixture).mean())


def latent_usage(mean: torch.Tensor, logvar: torch.Tensor, eps_w: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Active units, their fraction of latent_dim and I(x; z): the columns a trial records for the findings."""
    activity = active_units(mean, eps_w)
    return {
        "active_units": activity.count,
        "active_fraction": activity.fraction,
        "mutual_info": mutual_information(mean, logvar, eps_w, seed),
    }
