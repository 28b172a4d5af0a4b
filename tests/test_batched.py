import math
from dataclasses import replace

import pytest
import torch

from moonvae.core import batched, data, layout, passes, stacks
from moonvae.core.batched import fit_batch
from moonvae.core.models import build_model
from moonvae.core.train import Schedule, TrainingDiverged, fit, loss_terms

pytestmark = pytest.mark.usefixtures("one_thread")


def variant(config, model=None, **train):
    """`config` with some model fields (a dict) and train fields replaced."""
    return replace(config, model=replace(config.model, **(model or {})), train=replace(config.train, **train))


def splits(moons):
    return moons.train, moons.val


def histories(members):
    return [[epoch.as_dict() for epoch in member.result.history] for member in members]


def assert_close(first, second, rel=1e-5, absolute=1e-7):
    assert len(first) == len(second)
    for mine, theirs in zip(first, second, strict=True):
        assert mine == pytest.approx(theirs, rel=rel, abs=absolute)


def test_loss_falls(small_config, moons):
    members = fit_batch(
        [variant(small_config, batch_size=32, max_epochs=30, seed=seed) for seed in (0, 1)], *splits(moons)
    )
    for member in members:
        losses = [epoch.train_loss for epoch in member.result.history]
        assert len(losses) == 30 and member.error is None
        assert losses[-1] < 0.5 * losses[0]


# (model, likelihood, prior): the study's loss, the calibrated decoder (hand-written) and the VampPrior (autograd)
OPTIONS = [
    ("vae", "mse", "normal"),
    ("cvae", "mse", "normal"),
    ("vae", "gaussian", "normal"),
    ("cvae", "gaussian", "normal"),
    ("vae", "gaussian", "vamp"),
    ("cvae", "mse", "vamp"),
]


@pytest.mark.parametrize(("kind", "likelihood", "prior"), OPTIONS)
def test_stacked_gradients_equal_each_networks_autograd(small_config, moons, kind, likelihood, prior):
    common = {"model": kind, "likelihood": likelihood, "prior": prior, "pseudo_inputs": 5}
    configs = [
        variant(small_config, common | {"encoder_hidden": (8, 4), "latent_dim": 3, "beta": 2.0, "eps_w": 0.5}),
        variant(small_config, common | {"encoder_hidden": (2, 16), "decoder_hidden": (5,), "eps_w": 1.0}),
    ]
    networks = [build_model(config.model, seed) for seed, config in enumerate(configs)]
    members = [
        batched._Member(row, config, network, torch.Generator(), Schedule(config.train))
        for row, (config, network) in enumerate(zip(configs, networks, strict=True))
    ]
    x, y = moons.train.x[:64], moons.train.y[:64]
    stack = batched._Stack(members, data.Split(x, y), data.Split(x, y))
    generator = torch.Generator().manual_seed(0)
    noise = [torch.randn(64, config.model.latent_dim, generator=generator) for config in configs]
    scaled_noise = torch.zeros(2, 64, stack.shapes["head.weight"][2])
    for row, config in enumerate(configs):
        scaled_noise[row, :, : config.model.latent_dim] = config.model.eps_w * noise[row]
    inputs = stack.train_inputs.expand(2, -1, -1)
    state = passes.forward(stack.layers, inputs, scaled_noise, stack.kl_scale)
    losses, grads = stack._gradient(inputs, scaled_noise)
    for row, (config, network) in enumerate(zip(configs, networks, strict=True)):
        mean, logvar = network.encode(x, y)
        z = mean + config.model.eps_w * noise[row] * torch.exp(0.5 * logvar)
        terms = network.loss(x, network.decode(z, y), {"mean": mean, "logvar": logvar, "z": z, "y": y})
        terms.loss.backward()
        # the VampPrior's KL estimate is a difference of log densities of a few nats: float32 keeps ~1e-6 of it
        assert state.mse[row].item() == pytest.approx(terms.mse.item(), rel=1e-5)
        assert state.kl[row].item() == pytest.approx(terms.kl.item(), rel=1e-5, abs=1e-6)
        assert losses[row].item() == pytest.approx(terms.loss.item(), rel=1e-5, abs=1e-6)
        own = layout.unpad(grads[row], stack.shapes, layout.of([config]))
        assert torch.equal(layout.pad(own, stack.shapes)[0], grads[row])  # padded weights get exactly 0
        mine = build_model(config.model, 0)
        layout.load_tensors(mine, own)
        for (name, expected), actual in zip(network.named_parameters(), mine.parameters(), strict=True):
            torch.testing.assert_close(actual, expected.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(("likelihood", "prior"), [("mse", "normal"), ("gaussian", "vamp")])
def test_a_member_does_not_depend_on_its_batch(small_config, moons, likelihood, prior):
    """Alone, or beside a wider member that leaves early, a faster one and a diverging one: the same numbers."""
    options = {"likelihood": likelihood, "prior": prior}
    member = variant(small_config, options, batch_size=64, max_epochs=12)
    wider = variant(
        small_config,
        options | {"encoder_hidden": (64,), "latent_dim": 32, "decoder_hidden": (48,)},
        batch_size=64,
        max_epochs=4,
    )
    faster = variant(small_config, options | {"latent_dim": 2}, batch_size=64, max_epochs=12, lr=1e-2, seed=3)
    diverging = variant(small_config, options, batch_size=64, lr=1e4, seed=4)
    assert len(stacks.partition([wider, member, faster, diverging])) == 1  # one stack: the padding shrinks
    alone = fit_batch([member], *splits(moons))[0]
    together = fit_batch([wider, member, faster, diverging], *splits(moons))
    assert len(together[0].result.history) == 4 and together[3].diverged
    assert_close(histories([alone])[0], histories(together)[1])
    assert together[1].result.best_epoch == alone.result.best_epoch


@pytest.mark.parametrize(("kind", "likelihood", "prior"), [*OPTIONS[:3], ("cvae", "gaussian", "vamp")])
def test_one_member_follows_train_fit(small_config, moons, kind, likelihood, prior):
    """Same batch order, noise (the batch's noise count is a multiple of 16, see fit_batch), initial weights."""
    options = {"model": kind, "likelihood": likelihood, "prior": prior}
    config = variant(small_config, options, batch_size=32, max_epochs=20, lr=3e-2, lr_patience=3)
    network = build_model(config.model, config.train.seed)
    expected = fit(network, moons.train, moons.val, config.train)
    [member] = fit_batch([config], *splits(moons))
    absolute = 1e-6 if prior == "vamp" else 1e-7  # the VampPrior's val_kl is a small difference of log densities
    assert_close(histories([member])[0], [epoch.as_dict() for epoch in expected.history], rel=1e-4, absolute=absolute)
    assert member.result.best_epoch == expected.best_epoch
    lrs = [epoch.lr for epoch in member.result.history]
    assert lrs == [epoch.lr for epoch in expected.history] and min(lrs) < config.train.lr  # ReduceLROnPlateau acted


def test_each_member_gets_its_own_network_with_its_best_weights(small_config, moons):
    shapes = [((8,), 8, (32,)), ((2,), 16, (4,)), ((32,), 3, (16,))]
    configs = [
        variant(small_config, {"encoder_hidden": e, "latent_dim": latent, "decoder_hidden": d}, max_epochs=15 + i)
        for i, (e, latent, d) in enumerate(shapes)
    ]
    members = fit_batch(configs, *splits(moons))
    for config, member in zip(configs, members, strict=True):
        expected = build_model(config.model, 0)
        assert type(member.network) is type(expected) and not member.network.training
        assert [p.shape for p in member.network.parameters()] == [p.shape for p in expected.parameters()]
        assert loss_terms(member.network, moons.val).mse.item() == pytest.approx(member.result.best_val_mse, rel=1e-5)
        assert len(member.result.history) == config.train.max_epochs and not member.result.stopped_early


def test_a_diverging_member_is_reported_and_the_others_go_on(small_config, moons):
    configs = [variant(small_config, max_epochs=10), variant(small_config, lr=1e4, seed=1)]
    members = fit_batch(configs, *splits(moons))
    assert members[0].error is None and len(members[0].result.history) == 10
    assert members[1].diverged and isinstance(members[1].error, TrainingDiverged)
    assert "not finite at epoch" in str(members[1].error)
    assert all(math.isfinite(value) for value in members[0].result.history[-1].as_dict().values())


def test_early_stopping_per_member(small_config, moons):
    # lr 0: the val MSE never improves on epoch 0, so patience alone would stop at epoch `patience`
    frozen = variant(small_config, lr=0.0, patience=2, min_epochs=7, max_epochs=50)
    learning = variant(small_config, patience=50, max_epochs=20)
    stopped, trained = fit_batch([frozen, learning], *splits(moons))
    assert len(stopped.result.history) == 7 and stopped.result.stopped_early and stopped.result.best_epoch == 0
    assert len(trained.result.history) == 20 and not trained.result.stopped_early


def test_callback_stops_one_member(small_config, moons):
    class Pruned(Exception):
        pass

    seen = []

    def on_epoch(index, metrics):
        seen.append((index, metrics.epoch))
        if index == 1 and metrics.epoch == 3:
            raise Pruned("pruned at epoch 3")

    members = fit_batch([variant(small_config, seed=seed) for seed in range(3)], *splits(moons), on_epoch)
    assert isinstance(members[1].error, Pruned) and not members[1].diverged
    assert [epoch for index, epoch in seen if index == 1] == [0, 1, 2, 3]
    assert len(members[1].result.history) == 4
    assert [len(member.result.history) for member in (members[0], members[2])] == [15, 15]


def test_keyboard_interrupt_stops_the_batch(small_config, moons):
    def on_epoch(index, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_batch([small_config, small_config], *splits(moons), on_epoch)


def test_same_seeds_same_numbers(small_config, moons):
    configs = [variant(small_config, max_epochs=8, seed=seed) for seed in (0, 1)]
    first, second = histories(fit_batch(configs, *splits(moons))), histories(fit_batch(configs, *splits(moons)))
    assert first == second
    assert first[0] != first[1]


def test_narrow_members_share_a_stack_a_wide_one_is_not_padded_onto_them(small_config):
    narrow = [
        variant(small_config, {"encoder_hidden": (2,), "latent_dim": 2, "decoder_hidden": (w,)}) for w in (2, 4, 8)
    ]
    wide = variant(small_config, {"encoder_hidden": (128,), "latent_dim": 128, "decoder_hidden": (128,)})
    assert sorted(sorted(group) for group in stacks.partition([narrow[0], wide, *narrow[1:]])) == [[0, 2, 3], [1]]


def test_members_must_share_data_and_batch_size(small_config, moons):
    with pytest.raises(ValueError, match="batch_size"):
        fit_batch([small_config, variant(small_config, batch_size=32)], *splits(moons))
    with pytest.raises(ValueError, match="model"):
        fit_batch([small_config, variant(small_config, {"model": "cvae"})], *splits(moons))
    with pytest.raises(ValueError, match="likelihood"):
        fit_batch([small_config, variant(small_config, {"likelihood": "gaussian"})], *splits(moons))
    with pytest.raises(ValueError, match="pseudo_inputs"):
        vamp = variant(small_config, {"prior": "vamp"})
        fit_batch([vamp, variant(vamp, {"pseudo_inputs": 3})], *splits(moons))
