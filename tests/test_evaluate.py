"""Reconstruction metrics and the shared k-NN tools: known answers, then small trained models."""

import numpy as np
import pytest
import torch

from moonvae.analysis import reconstruction
from moonvae.config import DataConfig, ModelConfig, TrainConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit
from moonvae.sampling import quality

CONFIG = DataConfig(n_samples=1000)


def real(seed: int, n: int = 1000) -> np.ndarray:
    return reconstruction.fresh_moons(CONFIG, n, seed).x.numpy()


def test_fresh_seeds_never_reuse_the_training_seed():
    seeds = {reconstruction.fresh_seed(42, k) for k in range(3)}
    assert len(seeds) == 3 and 42 not in seeds
    fresh = reconstruction.fresh_moons(CONFIG, 100, reconstruction.fresh_seed(42, 0))
    x, _ = data.generate(CONFIG)
    assert not np.isin(fresh.x.numpy()[:, 0], x[:, 0]).any()
    assert fresh.y.sum() == 50  # balanced over the moons


def test_c2st_is_a_coin_flip_for_two_real_samples_and_certain_for_disjoint_ones():
    a, b = real(1), real(2)
    assert 0.44 < quality.c2st_accuracy(a, b) < 0.56
    assert quality.c2st_accuracy(a, b + [5.0, 5.0]) == 1.0
    assert quality.c2st_accuracy(a, b, seed=3) == quality.c2st_accuracy(a, b, seed=3)


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
    metrics, samples = reconstruction.evaluate_model(network, bank, moons, CONFIG, n=1000)
    assert set(metrics) == {"test_mse", "test_kl", "fresh_mse", "fresh_kl"}
    assert samples.prior.shape == samples.posterior.shape == (1000, 2)
    assert metrics["test_mse"] < 0.05 and metrics["fresh_mse"] < 0.05
    assert torch.equal(
        samples.reference.x, reconstruction.fresh_moons(CONFIG, 1000, reconstruction.fresh_seed(42, 0)).x
    )


def test_same_seed_same_samples_other_seed_other_samples(trained):
    moons, models = trained
    network, bank = models["cvae"]
    first = reconstruction.evaluate_model(network, bank, moons, CONFIG, n=500, seed=1)
    again = reconstruction.evaluate_model(network, bank, moons, CONFIG, n=500, seed=1)
    assert first[0] == again[0] and np.array_equal(first[1].prior, again[1].prior)
    other = reconstruction.evaluate_model(network, bank, moons, CONFIG, n=500, seed=2)[1]
    assert not np.array_equal(first[1].prior, other.prior) and not np.array_equal(first[1].posterior, other.posterior)


def test_an_untrained_model_reconstructs_worse(trained):
    moons, models = trained
    network = build_model(ModelConfig(model="cvae", latent_dim=8, decoder_hidden=(32,)), seed=0).eval()
    bank = latent_bank(network, moons.train.x, moons.train.y)
    untrained = reconstruction.evaluate_model(network, bank, moons, CONFIG, n=500)[0]
    trained_metrics = reconstruction.evaluate_model(*models["cvae"], moons, CONFIG, n=500)[0]
    assert untrained["fresh_mse"] > 5 * trained_metrics["fresh_mse"]
