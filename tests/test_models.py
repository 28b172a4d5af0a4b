import math

import pytest
import torch

from moonvae.config import ModelConfig
from moonvae.core.models import CVAE, VAE, LatentBank, build_model, log_mixture, traversal_latents


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(16, 2, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def y() -> torch.Tensor:
    return torch.arange(16) % 2


@pytest.mark.parametrize("model", ["vae", "cvae"])
def test_shapes(model, x, y):
    network = build_model(ModelConfig(model=model, encoder_hidden=(8, 4), decoder_hidden=(16,), latent_dim=5), seed=0)
    x_hat, latents = network(x, y)
    assert x_hat.shape == (16, 2)
    assert {name: tuple(latents[name].shape) for name in ("mean", "logvar", "z")} == {
        "mean": (16, 5),
        "logvar": (16, 5),
        "z": (16, 5),
    }
    assert latents["y"] is y  # the label the CVAE's VampPrior is conditioned on
    assert network.sample(16, y).shape == (16, 2)
    assert [m.out_features for m in network.encoder.body if hasattr(m, "out_features")] == [8, 4]


def test_cvae_inputs_carry_the_label():
    network = build_model(ModelConfig(model="cvae", latent_dim=3), seed=0)
    assert isinstance(network, CVAE)
    assert network.encoder.body[0].in_features == 3  # x1, x2, label
    assert network.decoder.body[0].in_features == 4  # z (3), label


def test_cvae_decodes_differently_per_label():
    network = build_model(ModelConfig(model="cvae", latent_dim=3), seed=0).eval()
    z = torch.zeros(4, 3)
    as_zero = network.decode(z, torch.zeros(4, dtype=torch.long))
    as_one = network.decode(z, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(as_zero, as_one)


def test_cvae_refuses_missing_labels(x):
    network = build_model(ModelConfig(model="cvae"), seed=0)
    with pytest.raises(ValueError, match="label"):
        network(x)


def test_vae_ignores_labels(x, y):
    network = build_model(ModelConfig(model="vae"), seed=0).eval()
    assert type(network) is VAE
    assert torch.equal(network(x, y)[0], network(x)[0])


def test_loss_matches_a_hand_computation():
    network = build_model(ModelConfig(beta=2.0, latent_dim=1), seed=0)
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    x_hat = torch.tensor([[1.5, 2.0], [0.0, 0.0]])
    latents = {"mean": torch.tensor([[1.0], [0.0]]), "logvar": torch.tensor([[0.0], [1.0]])}
    terms = network.loss(x, x_hat, latents)
    mse = (0.25 + 1.0) / 4  # squared errors summed over 4 elements
    # KL per latent: -0.5 * (1 + logvar - mean^2 - e^logvar): 0.5 for (1, 0), 0.5 * (e - 2) for (0, 1)
    kl = (0.5 + 0.5 * (torch.e - 2)) / 4
    assert terms.mse.item() == pytest.approx(mse)
    assert terms.kl.item() == pytest.approx(kl)
    assert terms.loss.item() == pytest.approx(mse + 2.0 * kl)


def test_reparameterisation_noise_is_weighted_by_eps_w(x):
    noisy = build_model(ModelConfig(eps_w=1.0), seed=0).train()
    quiet = build_model(ModelConfig(eps_w=0.01), seed=0).train()
    spread_noisy = (noisy(x, generator=torch.Generator().manual_seed(1))[1]["z"] - noisy.encode(x)[0]).std()
    spread_quiet = (quiet(x, generator=torch.Generator().manual_seed(1))[1]["z"] - quiet.encode(x)[0]).std()
    assert spread_quiet.item() == pytest.approx(spread_noisy.item() * 0.01, rel=1e-4)


def test_eval_mode_uses_the_posterior_mean(x):
    network = build_model(ModelConfig(), seed=0).eval()
    _, latents = network(x)
    assert torch.equal(latents["z"], latents["mean"])


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_model(ModelConfig(), seed=7), build_model(ModelConfig(), seed=7)
    c = build_model(ModelConfig(), seed=8)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.decoder.out.weight, c.decoder.out.weight)


def test_aggregate_posterior_samples_follow_the_bank_labels():
    network = build_model(ModelConfig(model="cvae", latent_dim=2, eps_w=0.1), seed=0).eval()
    bank = LatentBank(mean=torch.tensor([[5.0, 5.0], [-5.0, -5.0]]), logvar=torch.zeros(2, 2), y=torch.tensor([0, 1]))
    y = torch.tensor([0, 1, 1, 0])
    generator = torch.Generator().manual_seed(0)
    sampled = network.sample_posterior(bank, 4, y, generator)
    expected_z = torch.stack([bank.mean[int(label)] for label in y])
    # eps_w 0.1 and unit variance: the decoded points sit close to decode(bank mean of their own label)
    assert torch.allclose(sampled, network.decode(expected_z, y), atol=0.5)
    with pytest.raises(ValueError, match="no point with label 1"):
        network.sample_posterior(LatentBank(bank.mean[:1], bank.logvar[:1], bank.y[:1]), 1, torch.tensor([1]))


def test_traversal_sweeps_one_dimension_around_the_median():
    reference = torch.tensor([[0.0, 10.0, 1.0], [2.0, 20.0, 3.0], [4.0, 30.0, 5.0]])
    latents = traversal_latents(reference, dim=1, steps=5)
    assert latents.shape == (5, 3)
    assert latents[:, 1].tolist() == [10.0, 15.0, 20.0, 25.0, 30.0]
    assert latents[:, 0].tolist() == [2.0] * 5 and latents[:, 2].tolist() == [3.0] * 5


def test_a_model_without_the_options_samples_as_before(y):
    """The study's model (mse, normal) draws z ~ N(0, I) and decodes it: no extra draw, no noise, as ever."""
    network = build_model(ModelConfig(model="cvae", latent_dim=3), seed=0).eval()
    assert network.log_sigma is None and network.pseudo_inputs is None and network.sigma_x is None
    assert set(network.state_dict()) == {name for name, _ in network.named_parameters()}
    expected = network.decode(torch.randn(16, 3, generator=torch.Generator().manual_seed(5)), y)
    assert torch.equal(network.sample(16, y, torch.Generator().manual_seed(5)), expected)


def test_the_gaussian_likelihood_adds_sigma_x_noise_to_samples_not_to_reconstructions(x, y):
    network = build_model(ModelConfig(model="cvae", latent_dim=3, likelihood="gaussian"), seed=0).eval()
    with torch.no_grad():
        network.log_sigma.fill_(-2.0)
    assert network.sigma_x == pytest.approx(torch.e**-2)
    generator = torch.Generator().manual_seed(5)
    z = torch.randn(16, 3, generator=generator)
    noise = torch.randn(16, 2, generator=generator)
    sampled = network.sample(16, y, torch.Generator().manual_seed(5))
    torch.testing.assert_close(sampled, network.decode(z, y) + torch.e**-2 * noise)
    assert torch.equal(network(x, y)[0], network.decode(network.encode(x, y)[0], y))  # the mean, as ever


def test_the_gaussian_loss_is_the_negative_log_likelihood_per_coordinate():
    network = build_model(ModelConfig(beta=2.0, latent_dim=1, likelihood="gaussian", eps_w=1.0), seed=0)
    with torch.no_grad():
        network.log_sigma.fill_(math.log(0.5))
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    x_hat = torch.tensor([[1.5, 2.0], [0.0, 0.0]])
    latents = {"mean": torch.tensor([[1.0], [0.0]]), "logvar": torch.tensor([[0.0], [1.0]])}
    terms = network.loss(x, x_hat, latents)
    nll = torch.distributions.Normal(x_hat, 0.5).log_prob(x).mean().neg()
    kl = (0.5 + 0.5 * (torch.e - 2)) / 4  # eps_w 1: the KL of the posterior z is drawn from, as the study's
    assert terms.loss.item() == pytest.approx(nll.item() + 2.0 * kl)


def test_outside_the_studys_loss_the_kl_is_that_of_the_posterior_z_is_drawn_from():
    """eps_w 0.5: q(z|x) = N(mean, (0.5 std)^2), and the KL is torch's for that Gaussian against N(0, I)."""
    latents = {"mean": torch.tensor([[1.0, -0.5]]), "logvar": torch.tensor([[0.3, -1.0]])}
    study = build_model(ModelConfig(latent_dim=2, eps_w=0.5), seed=0)
    calibrated = build_model(ModelConfig(latent_dim=2, eps_w=0.5, likelihood="gaussian"), seed=0)
    drawn = torch.distributions.Normal(latents["mean"], 0.5 * torch.exp(0.5 * latents["logvar"]))
    expected = torch.distributions.kl_divergence(drawn, torch.distributions.Normal(0.0, 1.0)).sum()
    assert calibrated.kl(latents).item() == pytest.approx(expected.item(), rel=1e-6)
    assert study.kl(latents).item() != pytest.approx(expected.item(), rel=1e-3)  # the study's takes std alone


@pytest.mark.parametrize("model", ["vae", "cvae"])
def test_the_vamp_prior_is_the_mixture_of_the_pseudo_inputs_posteriors(model, y):
    network = build_model(ModelConfig(model=model, latent_dim=3, prior="vamp", pseudo_inputs=4, eps_w=0.7), seed=0)
    z = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    components = []
    for pseudo_input in network.pseudo_inputs:
        labels = y if model == "cvae" else None
        mean, logvar = network.encode(pseudo_input.expand(16, 2), labels)
        components.append(torch.distributions.Normal(mean, 0.7 * torch.exp(0.5 * logvar)).log_prob(z).sum(1))
    expected = torch.logsumexp(torch.stack(components), dim=0) - math.log(4)
    torch.testing.assert_close(network.log_prior(z, y), expected)
    assert network.sample(16, y, torch.Generator().manual_seed(0)).shape == (16, 2)


def test_the_options_travel_in_the_state_dict_as_plain_tensors(tmp_path):
    config = ModelConfig(model="cvae", likelihood="gaussian", prior="vamp", pseudo_inputs=5)
    network = build_model(config, seed=0)
    assert network.state_dict()["log_sigma"].shape == (1,) and network.state_dict()["pseudo_inputs"].shape == (5, 2)
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    loaded = build_model(config, seed=1)
    loaded.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    assert torch.equal(loaded.pseudo_inputs, network.pseudo_inputs) and loaded.sigma_x == network.sigma_x


def test_the_mixture_density_survives_narrow_components_far_from_the_origin():
    """Posteriors of std 1e-3 at means of about 5 in 128 dimensions: float32 rounding once lost tens of nats here."""
    generator = torch.Generator().manual_seed(0)
    mean = 5 + torch.randn(8, 128, generator=generator)
    logvar = torch.full((8, 128), 2 * math.log(1e-3))
    z = mean.repeat(2, 1) + 1e-3 * torch.randn(16, 128, generator=generator)
    exact = torch.distributions.Normal(mean.double(), 1e-3).log_prob(z.double()[:, None]).sum(-1)
    expected = torch.logsumexp(exact, dim=1) - math.log(8)
    torch.testing.assert_close(log_mixture(z, mean, logvar, None).double(), expected, rtol=1e-6, atol=1e-3)
