"""Judging samplers: known answers for constructed samplers, the summary and its error, the stopping rule."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons

from moonvae.core.train import one_torch_thread
from moonvae.sampling import quality

NOISE = 0.15
N = 500  # points per set where the test needs no more: a set then takes about a millisecond
TRAIN_X = make_moons(1200, noise=NOISE, random_state=42)[0].astype(np.float32)


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def test_the_summary_is_the_geometric_mean_with_its_delta_method_error():
    rng = np.random.default_rng(0)
    column = rng.normal(3.0, 0.6, size=40)
    same = np.stack([column, column, column], axis=1)  # three scales that move as one: the one column's error
    summary, error = quality.geometric_summary(same)
    assert summary == pytest.approx(column.mean()) and error == pytest.approx(column.std(ddof=1) / math.sqrt(40))
    apart = np.stack([column, np.full(40, 8.0), np.full(40, 1.0)], axis=1)  # two exact scales: a third of the error
    summary, error = quality.geometric_summary(apart)
    assert summary == pytest.approx((column.mean() * 8.0) ** (1 / 3))
    assert error == pytest.approx(summary * column.std(ddof=1) / math.sqrt(40) / (3 * column.mean()))
    assert math.isnan(quality.geometric_summary(same[:1])[1])


def test_clearly_worse_only_past_two_standard_errors_of_the_difference():
    assert not quality.clearly_worse(3.7, 0.2, 3.5, 0.2)  # inside the uncertainty
    assert quality.clearly_worse(3.7, 0.02, 3.5, 0.02)  # the same difference, measured finely
    assert not quality.clearly_worse(3.5, 0.2, 3.5, 0.2)
    assert quality.clearly_worse(3.7, math.nan, 3.5, math.nan)  # no error known: the values decide


def test_judge_sees_a_shifted_or_scaled_sampler():
    exact = quality.exact_sampler(NOISE)
    for name, sampler in {
        "shifted": lambda n, g, labels: exact(n, g, labels) + [0.3, 0.0],
        "scaled": lambda n, g, labels: exact(n, g, labels) * 1.3,
    }.items():
        scores = quality.judge(sampler, TRAIN_X, NOISE, sets=2, n=N, seed=0)
        assert scores["mmd_summary"] > 5 and scores["c2st"] > 0.6, name


def test_copying_is_low_for_jittered_training_points_and_one_for_fresh_points():
    def copies(n: int, rng: torch.Generator, labels: torch.Tensor | None) -> np.ndarray:
        picked = torch.randint(len(TRAIN_X), (n,), generator=rng)
        return TRAIN_X[picked.numpy()] + 0.005 * torch.randn((n, 2), generator=rng).numpy()

    assert quality.judge(copies, TRAIN_X, NOISE, sets=2, n=N)["copying"] < 0.5
    fresh = quality.judge(quality.exact_sampler(NOISE), TRAIN_X, NOISE, sets=8, n=N)
    assert abs(fresh["copying"] - 1) < max(3 * fresh["copying_se"], 0.02)


def test_spacing_sees_clumps_that_c2st_smooths_over_and_the_mmd_counts_as_fewer_points():
    exact = quality.exact_sampler(NOISE)

    def clumps(n: int, rng: torch.Generator, labels: torch.Tensor | None) -> np.ndarray:
        centres = exact(n // 4, rng, None).repeat(4, axis=0)  # 4 points around each exact point
        return centres + 0.003 * torch.randn((n, 2), generator=rng).numpy()

    clumped = quality.judge(clumps, TRAIN_X, NOISE, sets=4, n=N)
    fresh = quality.judge(exact, TRAIN_X, NOISE, sets=8, n=N)
    assert clumped["spacing"] < 0.3 and abs(fresh["spacing"] - 1) < max(3 * fresh["spacing_se"], 0.02)
    # a set of n / 4 independent points, each four times: 4x an exact sampler's MMD, whatever the width
    assert clumped["c2st"] < 0.6 and clumped["mmd_fine"] == pytest.approx(4, rel=0.1)


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
    scores = {key + end for key in quality.SCORES for end in ("", "_se")}
    assert first["sets"] == first["check_sets"] == 2 and set(first) == {"sets", "check_sets"} | scores
    one = quality.judge(exact, TRAIN_X, NOISE, sets=1, n=N)
    assert math.isnan(one["mmd_summary_se"]) and math.isnan(one["c2st_se"])  # no error from one set
    with pytest.raises(ValueError, match="finite 2-D points"):
        quality.judge(lambda n, g, labels: np.full((n, 2), np.nan), TRAIN_X, NOISE, sets=1, n=N)


def test_a_target_error_stops_each_sampler_once_its_summary_is_that_precise():
    exact = quality.exact_sampler(NOISE)
    samplers = {"exact": exact, "shifted": lambda n, g, labels: exact(n, g, labels) + [1.0, 0.0]}
    found = quality.judge_all(samplers, TRAIN_X, NOISE, sets=12, n=N, target_error=0.05)
    # far off, it is soon known to 5%; an exact sampler's summary varies by ~30% a set: 12 sets are not enough
    assert found["shifted"]["sets"] == quality.MIN_SETS and found["exact"]["sets"] == 12
    assert found["shifted"]["mmd_summary_se"] <= 0.05 * found["shifted"]["mmd_summary"]
    # the sets a sampler was judged on are the first of the sets it would have been judged on without a target
    alone = quality.judge(samplers["shifted"], TRAIN_X, NOISE, sets=quality.MIN_SETS, n=N)
    assert alone == found["shifted"]
