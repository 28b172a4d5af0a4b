"""The latent mixture: component choice, per-label sampling, seeding, safe round trip, and on trained models."""

import io
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import ROOT

from moonvae.config import RunConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit, one_torch_thread
from moonvae.sampling import density, quality, sources


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def gaussian(n: int, centre: list[float], seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.tensor(centre) + scale * torch.randn((n, len(centre)), generator=torch.Generator().manual_seed(seed))


def clusters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label 0 around +5 in every dimension, label 1 around -5, in 4 dimensions."""
    labels = torch.arange(n) % 2
    return gaussian(n, [0.0] * 4, seed, 0.3) + torch.where(labels[:, None] == 0, 5.0, -5.0), labels


def fitted(**options) -> dict[str, torch.Tensor]:
    (train, train_y), (val, val_y) = clusters(400, 0), clusters(200, 1)
    return density.fit_mixture(train, train_y, val, val_y, seed=0, **options)


def test_more_components_for_several_modes_and_one_for_a_single_gaussian():
    modes = torch.cat([gaussian(150, [8.0 * k, 0.0], seed=k, scale=0.5) for k in range(3)])
    held_out = torch.cat([gaussian(50, [8.0 * k, 0.0], seed=10 + k, scale=0.5) for k in range(3)])
    assert density.fit_mixture(modes, None, held_out, None, seed=0)["components"].item() > 1
    single = density.fit_mixture(gaussian(400, [1.0, 2.0], 0), None, gaussian(200, [1.0, 2.0], 1), None, seed=0)
    assert single["components"].tolist() == [1]


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_samples_land_near_their_labels_cluster(covariance):
    state = fitted(covariance=covariance, components=(1, 2, 5))
    assert state["labels"].tolist() == [0, 1]
    labels = torch.arange(1000) % 2
    z = density.sample_mixture(state, 1000, labels, torch.Generator().manual_seed(0))
    assert z.shape == (1000, 4)
    assert torch.all((z.mean(dim=1) > 0) == (labels == 0))  # every sample on its label's side
    for label, centre in ((0, 5.0), (1, -5.0)):
        own = z[labels == label]
        assert torch.allclose(own.mean(dim=0), torch.full((4,), centre), atol=0.1)
        assert torch.allclose(own.std(dim=0), torch.full((4,), 0.3), atol=0.05)


def test_samples_stay_in_the_subspace_of_the_latents():
    """Latents of a narrow encoder span few of the latent dimensions; the samples must not leave them."""
    basis = torch.linalg.qr(gaussian(16, [0.0, 0.0], 0)).Q.T  # 2 orthonormal directions in 16 dimensions
    offset = torch.linspace(-1, 1, 16)
    train, val = (offset + gaussian(n, [0.0, 0.0], seed) @ basis for n, seed in ((600, 1), (200, 2)))
    state = density.fit_mixture(train, None, val, None, seed=0)
    assert state["factors"].shape[-1] == 2  # fitted in 2 principal coordinates
    z = density.sample_mixture(state, 2000, None, torch.Generator().manual_seed(0)) - offset
    assert (z - (z @ basis.T) @ basis).abs().max() < 1e-4
    assert torch.allclose(torch.cov(z.T), torch.cov((train - offset).T), atol=0.15)


def test_samples_carry_the_training_noise():
    train, val = gaussian(600, [0.0, 0.0, 0.0], 1), gaussian(200, [0.0, 0.0, 0.0], 2)
    noise = torch.tensor([0.0, 0.5, 2.0]).expand(600, -1)
    state = density.fit_mixture(train, None, val, None, seed=0, train_noise=noise)
    z = density.sample_mixture(state, 20_000, None, torch.Generator().manual_seed(0))
    assert torch.allclose(z.var(dim=0), torch.tensor([1.0, 1.25, 5.0]), rtol=0.1)
    assert torch.equal(density.training_noise(torch.zeros(2, 3), 0.1), torch.full((2, 3), 0.1))


def test_full_covariance_keeps_correlations():
    correlated = gaussian(2000, [0.0, 0.0], 0) @ torch.tensor([[1.0, 0.9], [0.0, 0.3]])
    state = density.fit_mixture(correlated, None, correlated[:500], None, seed=0, components=(1, 2), covariance="full")
    z = density.sample_mixture(state, 20_000, None, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.cov(z.T), torch.cov(correlated.T), atol=0.05)


def test_sampling_is_seeded_and_labels_are_checked():
    state = fitted()
    labels = torch.tensor([0, 1, 1, 0])
    draw = lambda seed: density.sample_mixture(state, 4, labels, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    with pytest.raises(ValueError, match="one label per sample"):
        density.sample_mixture(state, 4, None)
    with pytest.raises(ValueError, match="only the labels"):
        density.sample_mixture(state, 2, torch.tensor([0, 2]))
    one = density.fit_mixture(clusters(400, 0)[0], None, clusters(200, 1)[0], None, seed=0)
    assert density.sample_mixture(one, 4, labels).shape == (4, 4)  # an unconditional mixture ignores labels


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_the_state_round_trips_a_safe_torch_load(covariance):
    state = fitted(covariance=covariance, components=(1, 2, 5))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[key], state[key]) for key in state)
    labels = torch.arange(10) % 2
    assert torch.equal(
        density.sample_mixture(loaded, 10, labels, torch.Generator().manual_seed(1)),
        density.sample_mixture(state, 10, labels, torch.Generator().manual_seed(1)),
    )


def test_fitting_and_sampling_need_no_scikit_learn(tmp_path):
    """Fitting is on every trained run's path (importing scikit-learn took 0.6 s of a run's start), sampling on
    every logged model's."""
    state = fitted()
    torch.save(state, tmp_path / "mixture.pt")
    code = (
        "import sys, torch; sys.modules['sklearn'] = None\n"  # any import of scikit-learn now fails
        "from moonvae.sampling.density import fit_mixture, sample_mixture\n"
        "x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))\n"
        "print(fit_mixture(x[:200], None, x[200:], None, seed=0)['means'].shape[-1])\n"  # fitted: 3 dimensions
        f"state = torch.load({str(tmp_path / 'mixture.pt')!r}, weights_only=True)\n"
        "print(sample_mixture(state, 3, torch.tensor([0, 1, 0])).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["3", "torch.Size([3, 4])"]


def test_a_mixture_beats_the_prior_of_small_trained_models(small_config: RunConfig, tmp_path):
    """eps_w 0.1 leaves the aggregate posterior far narrower than the prior: the mixture must find it."""
    moons = data.load(small_config.data, tmp_path)
    train_x, noise = moons.train.x.numpy(), small_config.data.noise
    training = replace(small_config.train, max_epochs=100, batch_size=64)  # 0.3 s; 15 epochs leave samples random
    for kind in ("vae", "cvae"):
        network = build_model(replace(small_config.model, model=kind), seed=0)
        fit(network, moons.train, moons.val, training)
        train, val = latent_bank(network, moons.train.x, moons.train.y), latent_bank(network, moons.val.x, moons.val.y)
        labels = (train.y, val.y) if network.n_conditions else (None, None)
        spread = density.training_noise(train.logvar, network.config.eps_w)
        state = density.fit_mixture(train.mean, labels[0], val.mean, labels[1], seed=0, train_noise=spread)
        judge = dict(sets=2, n=500, conditional=bool(network.n_conditions))
        prior = quality.judge(sources.prior_sampler(network), train_x, noise, **judge)
        mixture = quality.judge(sources.mixture_sampler(network, state), train_x, noise, **judge)
        assert mixture["mmd_summary"] < prior["mmd_summary"] / 2 and mixture["c2st"] < prior["c2st"], kind
        if network.n_conditions:
            assert mixture["on_moon"] > 0.9 and mixture["on_moon"] > prior["on_moon"]


@pytest.mark.parametrize("covariance", ["full", "diag"])
@pytest.mark.parametrize("k", [1, 3, 12])
def test_fit_em_is_scikit_learns_gaussian_mixture(covariance, k):
    """The batched EM fits what scikit-learn fits from the same seed (its fallback for large inputs is that fit)."""
    points = torch.cat([gaussian(100, [3.0 * m, -m, 0.5 * m], seed=m, scale=0.2 + 0.3 * m) for m in range(4)])
    points = points.double().numpy()
    mine = density.fit_em(points, k, seed=7, covariance=covariance)
    theirs = density._fit_sklearn(points, k, seed=7, covariance=covariance)
    for attribute in ("weights_", "means_", "covariances_"):
        assert getattr(mine, attribute) == pytest.approx(getattr(theirs, attribute), rel=1e-6, abs=1e-9)
    assert mine.score_samples(points[:50]) == pytest.approx(theirs.score_samples(points[:50]), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 7, 123])
@pytest.mark.parametrize("k", [1, 2, 5, 20, 100])
def test_kmeans_plusplus_picks_scikit_learns_seeds(seed, k):
    """The same indices as scikit-learn's kmeans_plusplus, so a mixture fits as it did with scikit-learn's seeds."""
    from sklearn.cluster import kmeans_plusplus

    points = torch.cat([gaussian(150, [3.0 * m, -m, 0.5 * m, m], seed=m, scale=0.2 + 0.3 * m) for m in range(4)])
    points = points.double().numpy()
    _, theirs = kmeans_plusplus(points, k, random_state=seed)
    assert density.kmeans_plusplus(points, k, seed).tolist() == theirs.tolist()
