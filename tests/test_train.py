import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from moonvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from moonvae.core import data
from moonvae.core.models import build_model
from moonvae.core.train import (
    EpochMetrics,
    Schedule,
    TrainingDiverged,
    adam_step,
    fit,
    flat_parameters,
    loss_terms,
    negative_elbo,
)
from moonvae.sampling.quality import on_moon_share

pytestmark = pytest.mark.usefixtures("one_thread")


def train(small_config, moons, **overrides):
    network = build_model(small_config.model, small_config.train.seed)
    result = fit(network, moons.train, moons.val, replace(small_config.train, **overrides))
    return network, result


def test_loss_falls(small_config, moons):
    _, result = train(small_config, moons, max_epochs=30, batch_size=32)
    losses = [epoch.train_loss for epoch in result.history]
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1].val_mse < result.history[0].val_mse


def test_best_weights_are_restored(small_config, moons):
    network, result = train(small_config, moons, max_epochs=30)
    best = min(result.history, key=lambda epoch: epoch.val_mse)
    assert (result.best_epoch, result.best_val_mse) == (best.epoch, best.val_mse)
    assert loss_terms(network, moons.val).mse.item() == pytest.approx(result.best_val_mse, rel=1e-6)
    assert not network.training


def test_early_stopping_after_patience(small_config, moons):
    # lr 1e-2: val MSE plateaus within a few dozen epochs, then patience runs out
    _, result = train(small_config, moons, lr=1e-2, batch_size=32, max_epochs=500, patience=5)
    assert result.stopped_early
    assert len(result.history) < 500
    last = result.history[-1].epoch
    assert last - result.best_epoch == 5
    assert all(epoch.val_mse >= result.best_val_mse for epoch in result.history[result.best_epoch + 1 :])


def test_no_early_stop_before_min_epochs(small_config, moons):
    # lr 0 (fit takes it; TrainConfig.validate would not): no epoch beats epoch 0's val MSE,
    # so patience 1 alone would stop after epoch 1; min_epochs holds it to exactly 20 epochs
    _, result = train(small_config, moons, lr=0.0, max_epochs=50, patience=1, min_epochs=20)
    assert len(result.history) == 20
    assert result.stopped_early and result.best_epoch == 0


def test_same_seed_same_numbers(small_config, moons):
    first = train(small_config, moons, max_epochs=8)[1].history
    second = train(small_config, moons, max_epochs=8)[1].history
    other = train(small_config, moons, max_epochs=8, seed=1)[1].history
    assert first == second
    assert first != other


def test_reduce_lr_on_plateau(small_config, moons):
    _, result = train(small_config, moons, lr=1e-6, max_epochs=12, lr_patience=2, patience=100)
    lrs = [epoch.lr for epoch in result.history]
    assert lrs[0] == 1e-6 and min(lrs) <= 1e-7


def test_callback_sees_every_epoch_and_can_stop_training(small_config, moons):
    seen = []

    class Stop(Exception):
        pass

    def on_epoch(metrics):
        seen.append(metrics.epoch)
        if metrics.epoch == 4:
            raise Stop

    network = build_model(small_config.model, 0)
    with pytest.raises(Stop):
        fit(network, moons.train, moons.val, small_config.train, on_epoch=on_epoch)
    assert seen == [0, 1, 2, 3, 4]


def test_nan_loss_stops_with_a_clear_message(small_config, moons):
    poisoned = data.Split(moons.train.x.clone(), moons.train.y.clone())
    poisoned.x[0, 0] = math.nan
    given = data.Split(poisoned.x.clone(), poisoned.y.clone())
    network = build_model(small_config.model, 0)
    with pytest.raises(TrainingDiverged, match="not finite at epoch 0"):
        fit(network, poisoned, moons.val, TrainConfig(max_epochs=5))
    torch.testing.assert_close(poisoned.x, given.x, rtol=0, atol=0, equal_nan=True)  # fit left its data as given
    assert torch.equal(poisoned.y, given.y)


def test_schedule_lowers_the_lr_as_torch_reduce_lr_on_plateau(small_config):
    """Schedule's plateau rule, which fit and fit_batch follow, is torch's (mode min, default threshold)."""
    config = replace(small_config.train, lr=1e-2, lr_patience=2, lr_factor=0.5, max_epochs=200, patience=200)
    schedule = Schedule(config)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    torch_rule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    generator = torch.Generator().manual_seed(0)
    losses = (1 / torch.arange(1, 201) + 0.05 * torch.rand(200, generator=generator)).tolist()  # falls, then wobbles
    lrs, torch_lrs = [], []
    for epoch, loss in enumerate(losses):
        schedule.record(EpochMetrics(epoch, loss, loss, loss, 0.0, schedule.lr))
        torch_rule.step(loss)
        lrs.append(schedule.lr)
        torch_lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == torch_lrs
    assert len(set(lrs)) > 3  # the rule acted several times


def test_adam_step_is_clipping_then_torch_adam_step_for_step(small_config):
    """fit's and fit_batch's update: clip_grad_norm_ then torch.optim.Adam, on a flat [1, P] row, lr changing midway."""
    network = build_model(small_config.model, 0)
    parameters = list(network.parameters())
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    weights, grad = flat_parameters(build_model(small_config.model, 0))
    moments = torch.zeros_like(weights), torch.zeros_like(weights)
    generator = torch.Generator().manual_seed(0)
    clipped = 0
    for step in range(1, 61):
        lr = 1e-2 if step <= 30 else 1e-3
        optimizer.param_groups[0]["lr"] = lr
        scale = 3.0 if step % 2 else 0.01  # every other gradient is clipped (the clip is 1)
        grad.copy_(torch.randn(weights.shape, generator=generator) * scale)
        offset = 0
        for parameter in parameters:
            parameter.grad = grad[0, offset : offset + parameter.numel()].view_as(parameter).clone()
            offset += parameter.numel()
        clipped += torch.nn.utils.clip_grad_norm_(parameters, 1.0).item() > 1.0
        optimizer.step()
        adam_step(weights, grad, moments, step, torch.tensor([[lr]], dtype=torch.float64), torch.tensor([[1.0]]))
        expected = torch.cat([parameter.detach().reshape(-1) for parameter in parameters])
        torch.testing.assert_close(weights[0], expected, rtol=1e-6, atol=1e-7)
    assert clipped == 30


def test_fit_leaves_each_parameter_its_own_storage(small_config, moons):
    network, _ = train(small_config, moons, max_epochs=2)
    pointers = {parameter.data_ptr() for parameter in network.parameters()}
    assert len(pointers) == len(list(network.parameters()))
    assert all(parameter.grad is None for parameter in network.parameters())


def test_fit_imports_no_torch_dynamo(tmp_path):
    """torch.optim's first optimizer imports torch._dynamo, 1.5 s of a run's start: fit makes none."""
    script = (
        "import sys; from moonvae.config import RunConfig, TrainConfig; from moonvae.core import data, models, train\n"
        f"config = RunConfig(train=TrainConfig(max_epochs=1)); moons = data.load(config.data, {str(tmp_path)!r})\n"
        "train.fit(models.build_model(config.model, 0), moons.train, moons.val, config.train)\n"
        "print('torch._dynamo' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


def calibrated(model="cvae", noise=0.15, prior="normal", epochs=1500, latent_dim=2):
    """A sigma-VAE on 1000 points: eps_w 1, beta 1, two hidden layers of 32, no lr decay, no early stop."""
    return RunConfig(
        DataConfig(n_samples=1000, noise=noise),
        ModelConfig(
            model=model,
            encoder_hidden=(32, 32),
            decoder_hidden=(32, 32),
            latent_dim=latent_dim,
            eps_w=1.0,
            likelihood="gaussian",
            prior=prior,
            pseudo_inputs=16,
        ),
        TrainConfig(lr=3e-3, max_epochs=epochs, patience=epochs, lr_patience=epochs),
    )


def train_calibrated(config, folder):
    moons = data.load(config.data, folder)
    network = build_model(config.model, config.train.seed)
    result = fit(network, moons.train, moons.val, config.train)
    return network, result, moons


@pytest.mark.parametrize("noise", [0.15, 0.05])
def test_sigma_x_learns_the_datas_noise(tmp_path, noise):
    """The Gaussian likelihood's sigma_x, learned by maximum likelihood, lands within 10% of make_moons' noise."""
    network, result, _ = train_calibrated(calibrated(noise=noise), tmp_path)
    assert network.sigma_x == pytest.approx(noise, rel=0.1)
    assert result.history[0].sigma_x > 2 * noise  # it started at 1 and was learned: logged every epoch
    assert result.history[result.best_epoch].sigma_x == pytest.approx(network.sigma_x)


def test_a_vamp_prior_cvae_samples_its_prior_on_the_requested_moon(tmp_path):
    network, _, _ = train_calibrated(calibrated(prior="vamp", epochs=800), tmp_path)
    labels = torch.arange(2).repeat(500)
    samples = network.sample(1000, labels, torch.Generator().manual_seed(0))
    assert on_moon_share(samples, labels, 0.15) > 0.95  # chance is 0.5; an exact sampler scores 0.99


@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_the_negative_elbo_bounds_the_models_own_negative_log_likelihood(tmp_path, prior):
    """With one latent dimension, -log p(x) = -log of the integral of p(x|z) p(z) dz, on a fine grid of z."""
    network, _, moons = train_calibrated(calibrated("vae", prior=prior, epochs=150, latent_dim=1), tmp_path)
    bound = negative_elbo(network, moons.val)
    z = torch.linspace(-12, 12, 4001)[:, None]
    with torch.no_grad():
        means = network.decode(z)
        normal = torch.distributions.Normal(0.0, 1.0).log_prob(z)[:, 0]
        log_prior = network.log_prior(z, None) if prior == "vamp" else normal
        log_likelihood = torch.distributions.Normal(means[:, None], network.sigma_x).log_prob(moons.val.x).sum(2)
        log_p = torch.logsumexp(log_likelihood + log_prior[:, None], dim=0) + math.log(24 / 4000)
    exact = -log_p.mean().item()
    # a bound up to its Monte Carlo error, and not a loose one: with one latent the posterior is near the truth
    assert exact - 3 * bound.stderr <= bound.nats < exact + 0.05
    assert 0 < bound.stderr < 0.01
    assert negative_elbo(network, moons.val) == bound  # seeded draws: the same figure every time


def test_the_negative_elbo_needs_a_calibrated_decoder(small_config, moons):
    network = build_model(small_config.model, 0)
    with pytest.raises(ValueError, match="gaussian likelihood"):
        negative_elbo(network, moons.val)
