"""The two-moons distribution itself: exact draws, its moons' likelihood, and a set's MMD to it in closed form.

The data: moon ~ Bernoulli(1/2), angle t ~ U(0, pi), the point on that moon's curve
(moon 0: (cos t, sin t), moon 1: (1 - cos t, 0.5 - sin t)) plus N(0, noise^2 I) noise.
make_moons puts its points on a fixed grid of angles with exactly half on each moon, so
a make_moons set is closer to the distribution than independent draws can be: it is
never the reference.

The MMD with k(x, y) = exp(-|x - y|^2 / (2 s^2)): in 2-D the noise integrates out,
- E_{x~P} k(x, y) = s^2 / (s^2 + noise^2) * mean over curve points c of
  exp(-|c - y|^2 / (2 (s^2 + noise^2))),
- E_{x,x'~P} k(x, x') = s^2 / (s^2 + 2 noise^2) * mean over pairs of curve points (c, c')
  of exp(-|c - c'|^2 / (2 (s^2 + 2 noise^2))),
the curve means being Gauss-Legendre sums over the angle (`nodes`). A set y of n points
has the squared MMD E_PP k - 2 mean_j E_P k(., y_j) + mean_ij k(y_i, y_j) to the
distribution, with no reference sample and none of its noise, and an exact sampler's
expected value is (1 - E_PP k) / n, the floor, exactly. Its ratio to the floor is about
1 for an exact sampler and 1 + n MMD^2(P, Q) / (1 - E_PP k) for a sampler Q, at three
widths (SCALES): `wide`, the median distance between exact points (~1.19 at noise 0.15:
the moons' balance and overall shape), `mid`, 2 x noise (their thickness and
curvature), and `fine`, noise / 2 (the noise itself), at least FINE_MIN.

Computed on a grid: as k(a, b) = 2 / (pi s^2) * integral of g_a g_b, g_a(z) =
exp(-|z - a|^2 / s^2), the squared MMD is 2 / (pi s^2) times the integral of
(f_P - f_y / n)^2, f_P = E_P g_x and f_y = sum_j g_{y_j}: f_P on a lattice once per
(noise, width) from the curve points, f_y per set as a product of two matrices of 1-D
Gaussians (points x lattice lines), each point's within GRID_REACH widths. The
trapezoid sum is exact to exp(-pi^2 / (2 GRID_STEP^2)) = 1e-6 of it, in time linear in
the points (3 ms for a set of 2000 at three widths, against 20 directly). Points spread
so far that the grid would be larger are summed directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

SCALES = ("wide", "mid", "fine")
FINE_MIN = 0.01  # the fine width below noise 0.02: ~3 spacings of 2000 points along the moons, or it sees only itself
WIDTH_POINTS = 2000  # exact points whose median pairwise distance is the wide width
# Gauss-Legendre nodes per moon: this many over the integrand's width sqrt(s^2 + noise^2), at least MIN_NODES;
# the curve terms then agree with twice as many nodes to 1e-10 (test_quality, bench/quality_speed.py)
NODE_DENSITY, MIN_NODES = 8.0, 16
GRID_STEP, GRID_REACH = 0.6, 4.0  # the lattice's spacing, and how far a point's Gaussian goes, in kernel widths
GRID_CELLS_PER_POINT = 64  # above this many lattice points per sample (far-spread samples) the direct sum is cheaper
KERNEL_ROWS = 128  # rows of a direct kernel block: 2 MB of float64 at n = 2000, kept in cache
CURVES_LOW, CURVES_HIGH = (-1.0, -0.5), (2.0, 1.0)  # the corners of the box the two moons' curves span
MOON_NODES = 256  # at most, per moon in the Bayes classifier's integral (noise < 0.04), to bound its cost
MIN_NOISE = 0.01  # noise the classifier assumes at noise 0: the nearest-moon rule, smoothly
WIDTH_STREAM = 0  # the random stream of the wide width's exact draws (quality's streams follow)


def rng(*key: int) -> torch.Generator:
    """A torch random generator seeded from a tuple of ints: distinct tuples give unrelated streams."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0]))


def exact_moons(
    n: int, noise: float, rng: torch.Generator, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n independent points of the distribution (float32), and their moon labels (Bernoulli(1/2), or those given)."""
    if labels is None:
        labels = torch.randint(2, (n,), generator=rng)
    t = torch.rand(n, generator=rng, dtype=torch.float64) * math.pi
    lower = labels.to(torch.bool)
    x = torch.where(lower, 1 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    noisy = torch.stack([x, y], dim=1) + noise * torch.randn((n, 2), generator=rng, dtype=torch.float64)
    return noisy.float(), labels


@cache
def curve_points(nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre points of both moons' curves (2 nodes x 2, float64; moon 0 first) and weights summing to 1."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    t = torch.from_numpy((x + 1) * math.pi / 2)
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.tensor([1.0, 0.5], dtype=torch.float64) - upper
    weights = torch.from_numpy(w / 4)  # / 2 for the angle's interval, / 2 for the two moons
    return torch.cat([upper, lower]), torch.cat([weights, weights])


def nodes(width: float, noise: float) -> int:
    """Quadrature nodes per moon for a kernel of this width: enough to resolve the narrowest integrand."""
    return max(MIN_NODES, math.ceil(NODE_DENSITY / math.sqrt(width**2 + noise**2)))


def gaussians(lines: torch.Tensor, centres: torch.Tensor, variance: float) -> torch.Tensor:
    """exp(-(line - centre)^2 / (2 variance)) for each centre (rows) and line (columns)."""
    return (lines[None, :] - centres[:, None]).square_().mul_(-0.5 / variance).exp_()


@dataclass(frozen=True)
class Kernel:
    """One width's closed-form terms: all a set's MMD needs of the distribution, fixed by (noise, width)."""

    width: float
    points: torch.Tensor  # curve points (float64) and their quadrature weights
    weights: torch.Tensor
    cross_variance: float  # s^2 + noise^2: the curve's kernel in E_P k(., y)
    pair_mean: float  # E_{x,x'~P} k(x, x')
    corner: torch.Tensor  # the lattice index (of spacing GRID_STEP * width) of density[0, 0]
    density: torch.Tensor  # f_P = E_P exp(-|z - x|^2 / s^2) at the lattice points around the curves (float64)

    @property
    def step(self) -> float:
        return GRID_STEP * self.width

    def expected(self, y: torch.Tensor) -> torch.Tensor:
        """E_{x~P} k(x, y) for each row of y (float64)."""
        squared = torch.cdist(y.double(), self.points).pow_(2)
        factor = self.width**2 / self.cross_variance
        return factor * (squared.mul_(-0.5 / self.cross_variance).exp_() @ self.weights)

    def floor(self, n: int) -> float:
        """An exact sampler's expected squared MMD for sets of n points."""
        return (1 - self.pair_mean) / n


def kernel(width: float, noise: float, node_count: int | None = None) -> Kernel:
    """The closed-form terms of one width (node_count: the quadrature's, by default `nodes`)."""
    points, weights = curve_points(node_count or nodes(width, noise))
    pair_variance = width**2 + 2 * noise**2
    pairs = torch.cdist(points, points).pow_(2).mul_(-0.5 / pair_variance).exp_()
    pair_mean = width**2 / pair_variance * float(weights @ pairs @ weights)
    # f_P: the noise widens each curve point's Gaussian (variance s^2 / 2) by noise^2
    step, variance = GRID_STEP * width, width**2 / 2 + noise**2
    reach = GRID_REACH * math.sqrt(2 * variance)
    corner = torch.tensor([math.floor((low - reach) / step) for low in CURVES_LOW])
    ends = [math.ceil((high + reach) / step) + 1 for high in CURVES_HIGH]
    lines = [step * torch.arange(int(c), end, dtype=torch.float64) for c, end in zip(corner, ends, strict=True)]
    along_x, along_y = (gaussians(lines[axis], points[:, axis], variance) for axis in (0, 1))
    density = width**2 / (2 * variance) * (along_x * weights[:, None]).T @ along_y
    return Kernel(width, points, weights, width**2 + noise**2, pair_mean, corner, density)


def widths(noise: float) -> dict[str, float]:
    """The three widths: the median distance between exact points, 2 x noise and noise / 2 (at least FINE_MIN)."""
    real = exact_moons(WIDTH_POINTS, noise, rng(WIDTH_STREAM))[0]
    fine = max(noise / 2, FINE_MIN)
    return {"wide": float(torch.pdist(real.double()).median()), "mid": 4 * fine, "fine": fine}


@cache
def kernels(noise: float) -> dict[str, Kernel]:
    """Each scale's closed-form terms at this noise, computed once per process (tens of milliseconds)."""
    return {scale: kernel(width, noise) for scale, width in widths(noise).items()}


def kernel_mean(a: torch.Tensor, b: torch.Tensor, width: float) -> float:
    """Mean kernel over all pairs (a_i, b_j), directly, in float64 (blocks of rows that stay in cache)."""
    a, b = a.double(), b.double()
    scale, b_norms, total = -0.5 / width**2, (b * b).sum(1), 0.0
    for rows in a.split(KERNEL_ROWS):
        squared = torch.addmm(b_norms.expand(len(rows), -1), rows, b.T, alpha=-2).add_(
            (rows * rows).sum(1, keepdim=True)
        )
        total += float(squared.clamp_min_(0).mul_(scale).exp_().sum())
    return total / (len(a) * len(b))


def set_density(y: torch.Tensor, step: float, width: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """f_y = sum_j exp(-|z - y_j|^2 / s^2) at the lattice points around y, and the lattice index of its corner;
    None where the lattice would be larger than GRID_CELLS_PER_POINT per point."""
    reach = math.ceil(GRID_REACH / GRID_STEP)  # lattice lines either side of a point's nearest
    nearest = (y / step).round().long()
    corner = nearest.min(dim=0).values - reach
    lines = nearest.max(dim=0).values + reach + 1 - corner
    if int(lines.prod()) > GRID_CELLS_PER_POINT * len(y):
        return None
    window = nearest[:, :, None] + torch.arange(-reach, reach + 1)  # (n, 2 axes, 2 reach + 1) lattice lines
    weights = ((step * window.double() - y[:, :, None]) / width).square_().neg_().float().exp_()
    along_x, along_y = (
        torch.zeros(len(y), int(lines[axis])).scatter_(1, window[:, axis] - corner[axis], weights[:, axis])
        for axis in (0, 1)
    )
    return corner, (along_x.T @ along_y).double()  # float32 products: the MMD as float64's to 1e-7


def squared_mmd(y: torch.Tensor, term: Kernel) -> float:
    """A set's squared MMD to the distribution at one width: on the lattice, or directly for far-spread points."""
    points = y.double()
    found = set_density(points, term.step, term.width)
    if found is None:
        return term.pair_mean - 2 * float(term.expected(points).mean()) + kernel_mean(points, points, term.width)
    corner, density = found
    low = torch.minimum(corner, term.corner)
    high = torch.maximum(corner + torch.tensor(density.shape), term.corner + torch.tensor(term.density.shape))
    difference = torch.zeros(*(high - low).tolist(), dtype=torch.float64)
    (px, py), (yx, yy) = (term.corner - low).tolist(), (corner - low).tolist()
    difference[px : px + term.density.shape[0], py : py + term.density.shape[1]] += term.density
    difference[yx : yx + density.shape[0], yy : yy + density.shape[1]] -= density / len(y)
    return float(difference.square_().sum()) * 2 * term.step**2 / (math.pi * term.width**2)


def mmd_ratios(y: torch.Tensor, noise: float) -> np.ndarray:
    """A set's squared MMD to the distribution at each scale over an exact sampler's expected value (SCALES order)."""
    return np.array([squared_mmd(y, term) / term.floor(len(y)) for term in kernels(noise).values()])


def moon_log_likelihood(x: torch.Tensor, noise: float) -> torch.Tensor:
    """log p(x | moon k) up to a shared constant (n x 2): the noise density integrated over each moon's angle."""
    scale = max(noise, MIN_NOISE)
    points, weights = curve_points(min(nodes(0.0, scale), MOON_NODES))
    log_weights = weights[: len(weights) // 2].log().float()
    return torch.stack(
        [
            torch.cdist(x.float(), moon.float()).square_().mul_(-0.5 / scale**2).add_(log_weights).logsumexp(dim=1)
            for moon in points.chunk(2)
        ],
        dim=1,
    )
