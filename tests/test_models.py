import pytest
import torch

from moonvae.config import ModelConfig
from moonvae.core.models import CVAE, VAE, LatentBank, build_model, traversal_latents


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
    assert {name: tuple(t.shape) for name, t in latents.items()} == {"mean": (16, 5), "logvar": (16, 5), "z": (16, 5)}
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
