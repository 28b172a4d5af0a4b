"""Active units and I(x; z) on posteriors whose answer is known."""

import math

import pytest
import torch

from moonvae.config import DataConfig, ModelConfig
from moonvae.core import data as moons
from moonvae.core.latent_stats import active_units, latent_usage, mutual_information
from moonvae.core.models import build_model, latent_bank


def _posteriors(n: int, d: int, spread: float, logvar: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator) * spread, torch.full((n, d), logvar)


def test_exactly_the_varying_dimensions_are_active():
    generator = torch.Generator().manual_seed(0)
    mean = torch.full((500, 16), 0.3)  # constant units: collapsed, whatever their value
    mean[:, :5] = torch.randn(500, 5, generator=generator)
    assert active_units(mean) == (5, 5 / 16)
    assert active_units(torch.zeros(500, 16)) == (0, 0.0)


def test_activity_is_measured_in_units_of_the_sampling_noise():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(1000, 4, generator=generator) * 0.05  # variance 0.0025: below 0.01 on the prior's scale
    assert active_units(mean, eps_w=1.0).count == 0
    assert active_units(mean, eps_w=0.1).count == 4  # but 25 times the noise's variance at eps_w = 0.1


def test_active_units_of_a_model_with_collapsed_dimensions():
    """Zero the mean head's weights of 5 of 8 units: their posterior mean no longer depends on x."""
    network = build_model(ModelConfig(latent_dim=8, decoder_hidden=(16,)), seed=0)
    with torch.no_grad():
        network.encoder.mean.weight[3:] = 0.0
        network.encoder.mean.bias[3:] = 0.7
        network.encoder.mean.weight[:3] *= 20  # the others clearly vary
    x, y = moons.generate(DataConfig(n_samples=400))
    bank = latent_bank(network, torch.as_tensor(x), torch.as_tensor(y))
    assert active_units(bank.mean) == (3, 3 / 8)


def test_posteriors_that_ignore_x_carry_no_information():
    mean = torch.full((800, 6), 0.4)
    logvar = torch.full((800, 6), -1.0)
    assert mutual_information(mean, logvar) == pytest.approx(0.0, abs=1e-9)


def test_separated_posteriors_carry_up_to_log_n():
    mean, logvar = _posteriors(600, 4, spread=3.0, logvar=-8.0)  # means far apart, posteriors narrow
    separated = mutual_information(mean, logvar)
    assert separated == pytest.approx(math.log(600), abs=0.01)
    overlapping = mutual_information(*_posteriors(600, 4, spread=0.3, logvar=0.0))
    assert 0.0 < overlapping < separated - 1.0


def test_information_is_bounded_by_log_n_and_grows_as_eps_w_shrinks():
    mean, logvar = _posteriors(700, 8, spread=0.5, logvar=0.0)  # more than one block of rows
    values = [mutual_information(mean, logvar, eps_w) for eps_w in (1.0, 0.3, 0.1, 0.01)]
    assert values == sorted(values)
    assert all(value <= math.log(700) + 1e-9 for value in values)


def test_the_estimate_matches_the_direct_sum_and_is_seeded():
    """The blocked matrix-product form against log-densities summed term by term."""
    mean, logvar = _posteriors(300, 5, spread=0.5, logvar=-2.0, seed=1)
    eps_w = 0.3
    generator = torch.Generator().manual_seed(7)
    std = eps_w * (0.5 * logvar.double()).exp()
    z = mean.double() + torch.randn(mean.shape, generator=generator, dtype=torch.float64) * std
    density = torch.distributions.Normal(mean.double()[None], std[None]).log_prob(z[:, None]).sum(-1)
    direct = (density.diagonal() - torch.logsumexp(density, dim=1) + math.log(300)).mean()
    assert mutual_information(mean, logvar, eps_w, seed=7) == pytest.approx(float(direct), rel=1e-9)
    assert mutual_information(mean, logvar, eps_w, seed=7) == mutual_information(mean, logvar, eps_w, seed=7)


def test_many_points_are_subsampled_to_a_fixed_count():
    mean, logvar = _posteriors(3000, 3, spread=3.0, logvar=-8.0)
    assert mutual_information(mean, logvar, max_points=500) == pytest.approx(math.log(500), abs=0.01)


def test_latent_usage_names_the_trial_columns():
    mean, logvar = _posteriors(200, 4, spread=1.0, logvar=-4.0)
    usage = latent_usage(mean, logvar, eps_w=0.1)
    assert set(usage) == {"active_units", "active_fraction", "mutual_info"}
    assert usage["active_units"] == 4 and usage["active_fraction"] == 1.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="N x d"):
        active_units(torch.zeros(5))
    with pytest.raises(ValueError, match="same N x d shape"):
        mutual_information(torch.zeros(5, 2), torch.zeros(5, 3))
