"""The distribution itself: exact draws, the closed form against Monte Carlo, the exact sampler at its floor."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons

from moonvae.core.train import one_torch_thread
from moonvae.sampling import distribution
from moonvae.sampling.quality import N_POINTS

NOISE = 0.15
N = 500  # points per set where the test needs no more: a set then takes about a millisecond


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def exact_ratios(sets: int, n: int, seed: int = 0, sample_noise: float = NOISE, lower_share: float = 0.5) -> np.ndarray:
    """Each set's MMD ratios (sets x scales) at NOISE of exact draws, or of draws with another noise or balance."""
    rows = []
    for index in range(sets):
        rng = distribution.rng(seed, index)
        labels = (torch.rand(n, generator=rng) < lower_share).long()
        rows.append(distribution.mmd_ratios(distribution.exact_moons(n, sample_noise, rng, labels)[0], NOISE))
    return np.array(rows)


def test_exact_moons_follow_make_moons():
    exact, labels = distribution.exact_moons(20_000, NOISE, distribution.rng(1))
    x, y = make_moons(20_000, noise=NOISE, random_state=1)
    assert abs(labels.float().mean().item() - 0.5) < 0.015  # Bernoulli(1/2): 4 standard errors
    for moon in (0, 1):
        ours, theirs = exact.numpy()[labels.numpy() == moon], x[y == moon]
        assert np.abs(ours.mean(axis=0) - theirs.mean(axis=0)).max() < 0.02
        assert np.abs(ours.std(axis=0) - theirs.std(axis=0)).max() < 0.02
    # without noise: on the unit half circles, angles uniform on [0, pi] as make_moons' grid
    clean, labels = distribution.exact_moons(20_000, 0.0, distribution.rng(2))
    centre = torch.where(labels[:, None] == 1, torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.0]))
    offset = (clean - centre) * torch.where(labels[:, None] == 1, -1.0, 1.0)
    assert torch.allclose(offset.norm(dim=1), torch.ones(20_000), atol=1e-5)
    angles = torch.atan2(offset[:, 1], offset[:, 0]).numpy()
    assert np.abs(np.quantile(angles, [0.1, 0.5, 0.9]) - np.pi * np.array([0.1, 0.5, 0.9])).max() < 0.05


def test_the_widths_are_the_median_distance_twice_the_noise_and_half_of_it():
    widths = distribution.widths(NOISE)
    assert 1.1 < widths["wide"] < 1.3 and widths["mid"] == pytest.approx(0.3) and widths["fine"] == pytest.approx(0.075)
    at_zero = distribution.widths(0.0)
    assert at_zero["fine"] == distribution.FINE_MIN and at_zero["mid"] == 4 * distribution.FINE_MIN


@pytest.mark.parametrize("noise", [0.0, 0.15])
def test_the_closed_form_agrees_with_monte_carlo(noise):
    """E_PP k and E_P k(., y) against means over 400 000 exact draws: within 4 standard errors, themselves within
    3% of E_PP k (the noise's factor s^2 / (s^2 + 2 noise^2) is 0.2 at the fine width: leaving it out would fail)."""
    draws = 400_000
    x, x_other = (distribution.exact_moons(draws, noise, distribution.rng(10, side))[0].double() for side in (0, 1))
    probes = torch.tensor([[0.0, 1.0], [1.0, -0.5], [0.5, 0.25], [2.0, 0.5], [-1.2, 0.1]], dtype=torch.float64)
    for scale, term in distribution.kernels(noise).items():
        pairs = torch.exp(-(x - x_other).pow(2).sum(1) / (2 * term.width**2))
        error = pairs.std().item() / math.sqrt(draws)
        assert abs(pairs.mean().item() - term.pair_mean) < 4 * error and error < 0.03 * term.pair_mean, scale
        kernel = torch.exp(-torch.cdist(probes, x).pow(2) / (2 * term.width**2))
        errors = kernel.std(dim=1) / math.sqrt(draws)
        assert (torch.abs(kernel.mean(dim=1) - term.expected(probes)) < 4 * errors + 1e-12).all(), scale


@pytest.mark.parametrize("noise", [0.0, 0.05, 0.15, 0.5])
def test_the_curve_integrals_have_converged(noise):
    """Twice the Gauss-Legendre nodes change no term by more than 1e-10: the quadrature is exact for our purpose."""
    probes = distribution.exact_moons(200, noise, distribution.rng(11))[0] * 1.5  # on and off the moons
    for scale, width in distribution.widths(noise).items():
        nodes = distribution.nodes(width, noise)
        coarse, fine = distribution.kernel(width, noise, nodes), distribution.kernel(width, noise, 2 * nodes)
        assert abs(coarse.pair_mean - fine.pair_mean) < 1e-10, scale
        assert (coarse.expected(probes) - fine.expected(probes)).abs().max() < 1e-10, scale


@pytest.mark.parametrize("noise", [0.0, 0.15, 0.5])
def test_the_lattice_gives_the_squared_mmd_of_the_direct_sums(noise):
    """On the lattice as E_PP k - 2 mean E_P k(., y) + mean_ij k(y_i, y_j) directly in float64: exact sets, sets
    widened or shifted by 2% (ratios near 1, where the terms cancel most), and far-spread sets (summed directly)."""
    points = distribution.exact_moons(N_POINTS, noise, distribution.rng(3))[0]
    for change in (lambda y: y, lambda y: y * 1.02, lambda y: y + 0.02, lambda y: y * 40):
        y = change(points).double()
        for scale, term in distribution.kernels(noise).items():
            direct = term.pair_mean - 2 * float(term.expected(y).mean()) + distribution.kernel_mean(y, y, term.width)
            assert distribution.squared_mmd(y.float(), term) == pytest.approx(direct, rel=1e-4), scale


def test_an_exact_sampler_scores_one_within_its_standard_error_at_every_width():
    """256 sets: a floor 20% off at the wide width, 7% at the mid and 2.5% at the fine one, would fail this."""
    ratios = exact_ratios(sets=256, n=N)
    means, errors = ratios.mean(axis=0), ratios.std(axis=0, ddof=1) / math.sqrt(len(ratios))
    assert (np.abs(means - 1) < 3 * errors).all(), (means, errors)
    assert (3 * errors < [0.2, 0.07, 0.025]).all(), errors


def test_a_make_moons_set_scores_below_the_floor_independent_draws_set():
    """Why the reference is never a make_moons set: its grid of angles and exact halves sit closer to the
    distribution than independent draws can (what a sampler of independent points is held to)."""
    sets = [torch.from_numpy(make_moons(N, noise=NOISE, random_state=seed)[0]).float() for seed in range(16)]
    assert np.array([distribution.mmd_ratios(points, NOISE) for points in sets]).mean(axis=0)[0] < 0.3


def test_the_mid_and_fine_widths_catch_a_narrower_noise_and_the_wide_one_a_moon_imbalance():
    """Caught: the ratio's mean three standard errors (16 sets of 2000 points) above 1.2."""

    def lowest(ratios: np.ndarray) -> np.ndarray:
        return ratios.mean(axis=0) - 3 * ratios.std(axis=0, ddof=1) / math.sqrt(len(ratios))

    narrow = exact_ratios(sets=16, n=N_POINTS, seed=1, sample_noise=0.12)
    assert list(lowest(narrow) > 1.2) == [False, True, True], narrow.mean(axis=0)  # the wide width hides it
    unbalanced = exact_ratios(sets=16, n=N_POINTS, seed=2, lower_share=0.45)  # 55/45
    assert lowest(unbalanced)[0] > 2 and unbalanced.mean(axis=0).argmax() == 0, unbalanced.mean(axis=0)
