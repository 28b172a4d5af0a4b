"""Judging samplers: the exact sampler against make_moons, then known answers for judge() on constructed samplers."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons

from moonvae.core.train import one_torch_thread
from moonvae.sampling import quality

NOISE = 0.15
N = 500  # points per set: the floor then takes a fraction of a second
TRAIN_X = make_moons(1200, noise=NOISE, random_state=42)[0].astype(np.float32)


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def test_exact_moons_follow_make_moons():
    exact, labels = quality.exact_moons(20_000, NOISE, quality.generator(1))
    x, y = make_moons(20_000, noise=NOISE, random_state=1)
    assert abs(labels.float().mean().item() - 0.5) < 0.015  # Bernoulli(1/2): 4 standard errors
    for moon in (0, 1):
        ours, theirs = exact.numpy()[labels.numpy() == moon], x[y == moon]
        assert np.abs(ours.mean(axis=0) - theirs.mean(axis=0)).max() < 0.02
        assert np.abs(ours.std(axis=0) - theirs.std(axis=0)).max() < 0.02
    # without noise: on the unit half circles, angles uniform on [0, pi] as make_moons' grid
    clean, labels = quality.exact_moons(20_000, 0.0, quality.generator(2))
    centre = torch.where(labels[:, None] == 1, torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.0]))
    offset = (clean - centre) * torch.where(labels[:, None] == 1, -1.0, 1.0)
    assert torch.allclose(offset.norm(dim=1), torch.ones(20_000), atol=1e-5)
    angles = torch.atan2(offset[:, 1], offset[:, 0]).numpy()
    assert np.abs(np.quantile(angles, [0.1, 0.5, 0.9]) - np.pi * np.array([0.1, 0.5, 0.9])).max() < 0.05


def test_a_make_moons_pair_beats_the_floor_that_independent_draws_set():
    """Why the reference is never a second make_moons set: two of them are far closer than independent draws."""
    floor = quality.mmd_floor(NOISE, N)
    a, b = (torch.from_numpy(make_moons(N, noise=NOISE, random_state=s)[0]).float() for s in (1, 2))
    assert quality.mmd(a, b, floor.bandwidth) < floor.mmd / 3


def test_kernel_mean_matches_float64_cdist():
    a, b = (
        quality.exact_moons(700, NOISE, quality.generator(3))[0],
        quality.exact_moons(300, NOISE, quality.generator(4))[0],
    )
    exact = torch.exp(-torch.cdist(a.double(), b.double()).pow(2) / (2 * 0.8**2)).mean().item()
    assert quality.kernel_mean(a, b, 0.8) == pytest.approx(exact, rel=1e-6)
    assert quality.mmd(a, a, 0.8) == pytest.approx(0.0, abs=1e-7)


def test_an_exact_sampler_scores_the_floor():
    exact = quality.exact_sampler(NOISE)
    runs = [  # conditional or not: the labels asked for are as random as the reference's
        quality.judge(exact, TRAIN_X, NOISE, sets=8, n=N, seed=seed, conditional=seed % 2 == 1) for seed in range(4)
    ]
    floor = quality.mmd_floor(NOISE, N)
    one_set_spread = floor.mmd_std / floor.mmd  # ratio spread of one exact set: about 0.85
    # 32 sets in all: their mean ratio is 1 within 3 standard errors
    assert abs(np.mean([r["mmd_ratio"] for r in runs]) - 1) < 3 * one_set_spread / np.sqrt(32)
    # the runs' spreads over their 8 sets, pooled, estimate the same one-set spread
    pooled_spread = np.sqrt(np.mean([r["mmd_ratio_std"] ** 2 for r in runs]))
    assert 0.5 * one_set_spread < pooled_spread < 1.5 * one_set_spread
    assert all(abs(r["c2st"] - 0.5) < 0.03 for r in runs)
    assert all(abs(r["copying"] - 1) < 0.1 and abs(r["spacing"] - 1) < 0.1 for r in runs)
    assert all(r["mmd_floor"] == floor.mmd for r in runs)


def test_judge_sees_a_shifted_or_scaled_sampler():
    exact = quality.exact_sampler(NOISE)
    for name, sampler in {
        "shifted": lambda n, g, labels: exact(n, g, labels) + [0.3, 0.0],
        "scaled": lambda n, g, labels: exact(n, g, labels) * 1.3,
    }.items():
        scores = quality.judge(sampler, TRAIN_X, NOISE, sets=2, n=N, seed=0)
        assert scores["mmd_ratio"] > 5 and scores["c2st"] > 0.6, name


def test_copying_is_low_for_jittered_training_points_and_one_for_fresh_points():
    def copies(n: int, generator: torch.Generator, labels: torch.Tensor | None) -> np.ndarray:
        picked = torch.randint(len(TRAIN_X), (n,), generator=generator)
        return TRAIN_X[picked.numpy()] + 0.005 * torch.randn((n, 2), generator=generator).numpy()

    assert quality.judge(copies, TRAIN_X, NOISE, sets=2, n=N)["copying"] < 0.5
    assert quality.judge(quality.exact_sampler(NOISE), TRAIN_X, NOISE, sets=2, n=N)["copying"] == pytest.approx(
        1, abs=0.1
    )


def test_spacing_sees_clumps_that_mmd_and_c2st_smooth_over():
    exact = quality.exact_sampler(NOISE)

    def clumps(n: int, generator: torch.Generator, labels: torch.Tensor | None) -> np.ndarray:
        centres = exact(n // 4, generator, None).repeat(4, axis=0)  # 4 points around each exact point
        return centres + 0.003 * torch.randn((n, 2), generator=generator).numpy()

    clumped = quality.judge(clumps, TRAIN_X, NOISE, sets=2, n=N)
    fresh = quality.judge(exact, TRAIN_X, NOISE, sets=2, n=N)
    assert clumped["spacing"] < 0.3 and fresh["spacing"] == pytest.approx(1, abs=0.1)
    assert clumped["mmd_ratio"] < 5 and clumped["c2st"] < 0.6


def test_on_moon_counts_samples_on_the_requested_moon():
    exact = quality.exact_sampler(NOISE)
    right = quality.judge(exact, TRAIN_X, NOISE, sets=2, n=N, conditional=True)
    wrong = quality.judge(lambda n, g, labels: exact(n, g, 1 - labels), TRAIN_X, NOISE, sets=2, n=N, conditional=True)
    assert right["on_moon"] > 0.97 and wrong["on_moon"] < 0.03
    assert "on_moon" not in quality.judge(exact, TRAIN_X, NOISE, sets=1, n=N)


def test_judge_is_reproducible_and_checks_the_samples():
    exact = quality.exact_sampler(NOISE)
    first = quality.judge(exact, TRAIN_X, NOISE, sets=2, n=N, seed=5, conditional=True)
    assert first == quality.judge(exact, TRAIN_X, NOISE, sets=2, n=N, seed=5, conditional=True)
    assert first != quality.judge(exact, TRAIN_X, NOISE, sets=2, n=N, seed=6, conditional=True)
    assert np.isnan(quality.judge(exact, TRAIN_X, NOISE, sets=1, n=N)["mmd_ratio_std"])  # no spread of one set
    with pytest.raises(ValueError, match="finite 2-D points"):
        quality.judge(lambda n, g, labels: np.full((n, 2), np.nan), TRAIN_X, NOISE, sets=1, n=N)


def test_the_floor_is_cached_once_and_reused(tmp_path, monkeypatch):
    exact = quality.exact_sampler(NOISE)
    first = quality.judge(exact, TRAIN_X, NOISE, sets=1, n=N, floor_cache=tmp_path)
    path = quality.floor_path(tmp_path, NOISE, N)
    written = path.read_text()
    assert json.loads(written)["mmd"] == first["mmd_floor"]

    def no_computing(noise: float, n: int) -> quality.Floor:
        raise AssertionError("the cached floor should have been read")

    monkeypatch.setattr(quality, "compute_floor", no_computing)
    assert quality.judge(exact, TRAIN_X, NOISE, sets=1, n=N, floor_cache=tmp_path) == first
    assert path.read_text() == written and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    # a floor of another protocol is computed again
    path.write_text(json.dumps({**json.loads(written), "protocol": 0}))
    with pytest.raises(AssertionError, match="cached floor"):
        quality.mmd_floor(NOISE, N, tmp_path)


@pytest.mark.slow
def test_the_floor_the_tests_keep_is_what_computing_gives(tmp_path):
    from conftest import FLOORS

    kept = json.loads((FLOORS / quality.floor_path(tmp_path, NOISE, quality.N_POINTS).name).read_text())
    assert kept == asdict(quality.compute_floor(NOISE, quality.N_POINTS))
