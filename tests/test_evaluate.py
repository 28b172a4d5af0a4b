"""Sample-quality metrics: known answers on constructed samples, then on small trained models."""

import numpy as np
import pytest

from moonvae import data, evaluate
from moonvae.config import DataConfig, ModelConfig, TrainConfig
from moonvae.models import build_model, latent_bank
from moonvae.train import fit

CONFIG = DataConfig(n_samples=1000)


def real(seed: int, n: int = 1000) -> np.ndarray:
    return evaluate.fresh_moons(CONFIG, n, seed).x.numpy()


def test_fresh_seeds_never_reuse_the_training_seed():
    seeds = {evaluate.fresh_seed(42, k) for k in range(3)}
    assert len(seeds) == 3 and 42 not in seeds
    fresh = evaluate.fresh_moons(CONFIG, 100, evaluate.fresh_seed(42, 0))
    x, _ = data.generate(CONFIG)
    assert not np.isin(fresh.x.numpy()[:, 0], x[:, 0]).any()
    assert fresh.y.sum() == 50  # balanced over the moons


def test_mmd_separates_real_from_shifted_and_floor_is_small():
    a, b = real(1), real(2)
    bandwidth = evaluate.median_bandwidth(a)
    assert 0.5 < bandwidth < 2.0  # the moons span about 3 x 1.5
    assert evaluate.mmd(a, a, bandwidth) == pytest.approx(0.0, abs=1e-12)
    floor = evaluate.mmd(a, b, bandwidth)
    slightly_off = evaluate.mmd(a, b + [0.2, 0.0], bandwidth)
    far_off = evaluate.mmd(a, b + [2.0, 0.0], bandwidth)
    assert floor < 0.001 and 10 * floor < slightly_off < far_off


def test_mmd_matches_the_rbf_formula_on_a_known_pair():
    # one point each, distance 1, bandwidth 1: k(a,a) + k(b,b) - 2 k(a,b) = 2 - 2 exp(-1/2)
    assert evaluate.mmd(np.zeros((1, 2)), np.array([[1.0, 0.0]]), 1.0) == pytest.approx(2 - 2 * np.exp(-0.5))
    # two points against their mean point: (1 + e^-2)/2 + 1 - 2 e^-1/2 with half-distances 1
    pair, centre = np.array([[-1.0, 0.0], [1.0, 0.0]]), np.zeros((1, 2))
    expected = (1 + np.exp(-2.0)) / 2 + 1 - 2 * np.exp(-0.5)
    assert evaluate.mmd(pair, centre, 1.0) == pytest.approx(expected)


def test_c2st_is_a_coin_flip_for_two_real_samples_and_certain_for_disjoint_ones():
    a, b = real(1), real(2)
    assert 0.44 < evaluate.c2st_accuracy(a, b) < 0.56
    assert evaluate.c2st_accuracy(a, b + [5.0, 5.0]) == 1.0
    assert evaluate.c2st_accuracy(a, b, seed=3) == evaluate.c2st_accuracy(a, b, seed=3)


def test_conditional_accuracy_follows_the_labels():
    classifier = evaluate.moon_classifier(evaluate.fresh_moons(CONFIG, 1000, 5))
    points = evaluate.fresh_moons(CONFIG, 1000, 6)
    x, y = points.x.numpy(), points.y.numpy()
    assert evaluate.conditional_accuracy(classifier, x, y) > 0.95
    assert evaluate.conditional_accuracy(classifier, x, 1 - y) < 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small trained VAE and CVAE on 1000 points (about a second each)."""
    moons = data.load(CONFIG, tmp_path_factory.mktemp("data"))
    models = {}
    for kind in ("vae", "cvae"):
        network = build_model(ModelConfig(model=kind, latent_dim=8, decoder_hidden=(32,)), seed=0)
        fit(network, moons.train, moons.val, TrainConfig(max_epochs=60, batch_size=64))
        models[kind] = network, latent_bank(network, moons.train.x, moons.train.y)
    return moons, models


def test_evaluate_model_names_and_ranges(trained):
    moons, models = trained
    network, bank = models["cvae"]
    metrics, samples = evaluate.evaluate_model(network, bank, moons, CONFIG, n=1000)
    assert set(metrics) == {
        "test_mse", "test_kl", "fresh_mse", "fresh_kl", "mmd_bandwidth", "mmd_floor", "prior_mmd", "posterior_mmd",
        "c2st_floor_accuracy", "prior_c2st_accuracy", "posterior_c2st_accuracy", "moon_classifier_accuracy",
        "prior_conditional_accuracy", "posterior_conditional_accuracy",
    }  # fmt: skip
    assert samples.prior.shape == samples.posterior.shape == (1000, 2)
    assert metrics["test_mse"] < 0.05 and metrics["fresh_mse"] < 0.05
    # eps_w = 0.1: the decoder learnt the aggregate posterior, far narrower than the prior
    assert metrics["mmd_floor"] < metrics["posterior_mmd"] < metrics["prior_mmd"]
    assert metrics["posterior_c2st_accuracy"] < metrics["prior_c2st_accuracy"]
    assert metrics["posterior_conditional_accuracy"] > 0.9
    assert metrics["moon_classifier_accuracy"] > 0.95


def test_vae_has_no_conditional_accuracy_and_samples_ignore_labels(trained):
    moons, models = trained
    network, bank = models["vae"]
    metrics, _ = evaluate.evaluate_model(network, bank, moons, CONFIG, n=500)
    assert "prior_conditional_accuracy" not in metrics
    assert metrics["prior_mmd"] > metrics["mmd_floor"]


def test_same_seed_same_metrics_other_seed_other_samples(trained):
    moons, models = trained
    network, bank = models["cvae"]
    first = evaluate.evaluate_model(network, bank, moons, CONFIG, n=500, seed=1)[0]
    assert first == evaluate.evaluate_model(network, bank, moons, CONFIG, n=500, seed=1)[0]
    assert first["prior_mmd"] != evaluate.evaluate_model(network, bank, moons, CONFIG, n=500, seed=2)[0]["prior_mmd"]


def test_an_untrained_model_is_told_apart(trained):
    moons, _ = trained
    network = build_model(ModelConfig(model="cvae", latent_dim=8, decoder_hidden=(32,)), seed=0).eval()
    bank = latent_bank(network, moons.train.x, moons.train.y)
    metrics, _ = evaluate.evaluate_model(network, bank, moons, CONFIG, n=500)
    assert metrics["posterior_c2st_accuracy"] > 0.9
    assert metrics["posterior_mmd"] > 10 * metrics["mmd_floor"]
