import math
from dataclasses import replace

import pytest
import torch

from moonvae.core import batched, data, layout, passes, stacks
from moonvae.core.batched import fit_batch
from moonvae.core.models import build_model
from moonvae.core.train import TrainingDiverged, fit, loss_terms

pytestmark = pytest.mark.usefixtures("one_thread")


def variant(config, model=None, **train):
    """`config` with some model fields (a dict) and train fields replaced."""
    return replace(config, model=replace(config.model, **(model or {})), train=replace(config.train, **train))


def splits(moons):
    return moons.train, moons.val


def histories(members):
    return [[epoch.as_dict() for epoch in member.result.history] for member in members]


def assert_close(first, second, rel=1e-5):
    assert len(first) == len(second)
    for mine, theirs in zip(first, second, strict=True):
        assert mine == pytest.approx(theirs, rel=rel, abs=1e-7)


def test_loss_falls(small_config, moons):
    members = fit_batch(
        [variant(small_config, batch_size=32, max_epochs=30, seed=seed) for seed in (0, 1)], *splits(moons)
    )
    for member in members:
        losses = [epoch.train_loss for epoch in member.result.history]
        assert len(losses) == 30 and member.error is None
        assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_hand_written_gradients_equal_autograd(small_config, moons, kind):
    configs = [
        variant(small_config, {"model": kind, "encoder_hidden": (8, 4), "latent_dim": 3, "beta": 2.0, "eps_w": 0.5}),
        variant(small_config, {"model": kind, "encoder_hidden": (2, 16), "decoder_hidden": (5,), "eps_w": 1.0}),
    ]
    shapes = layout.of(configs)
    networks = [build_model(config.model, seed) for seed, config in enumerate(configs)]
    weights = torch.cat([layout.pad(layout.network_tensors(network), shapes) for network in networks])
    x, y = moons.train.x[:64], moons.train.y[:64]
    inputs = batched._inputs(data.Split(x, y), kind == "cvae").expand(2, -1, -1)
    generator = torch.Generator().manual_seed(0)
    noise = [torch.randn(64, config.model.latent_dim, generator=generator) for config in configs]
    scaled_noise = torch.zeros(2, 64, shapes["head.weight"][2])
    for row, config in enumerate(configs):
        scaled_noise[row, :, : config.model.latent_dim] = config.model.eps_w * noise[row]
    layers = passes.Layers.of(weights, shapes)
    state = passes.forward(layers, inputs, scaled_noise)
    beta = batched._per_member([config.model.beta for config in configs])
    grads = passes.backward(layers, state, beta, int(kind == "cvae")).flat()
    for row, (config, network) in enumerate(zip(configs, networks, strict=True)):
        mean, logvar = network.encode(x, y)
        z = mean + config.model.eps_w * noise[row] * torch.exp(0.5 * logvar)
        terms = network.loss(x, network.decode(z, y), {"mean": mean, "logvar": logvar})
        terms.loss.backward()
        assert state.mse[row].item() == pytest.approx(terms.mse.item(), rel=1e-5)
        assert state.kl[row].item() == pytest.approx(terms.kl.item(), rel=1e-5)
        own = layout.unpad(grads[row], shapes, layout.of([config]))
        assert torch.equal(layout.pad(own, shapes)[0], grads[row])  # padded weights get exactly 0
        mine = build_model(config.model, 0)
        layout.load_tensors(mine, own)
        for (name, expected), actual in zip(network.named_parameters(), mine.parameters(), strict=True):
            torch.testing.assert_close(actual, expected.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_member_does_not_depend_on_its_batch(small_config, moons):
    """Alone, or beside a wider member that leaves early, a faster one and a diverging one: the same numbers."""
    member = variant(small_config, batch_size=64, max_epochs=12)
    wider = variant(
        small_config, {"encoder_hidden": (64,), "latent_dim": 32, "decoder_hidden": (48,)}, batch_size=64, max_epochs=4
    )
    faster = variant(small_config, {"latent_dim": 2}, batch_size=64, max_epochs=12, lr=1e-2, seed=3)
    diverging = variant(small_config, batch_size=64, lr=1e4, seed=4)
    assert len(stacks.partition([wider, member, faster, diverging])) == 1  # one stack: the padding shrinks
    alone = fit_batch([member], *splits(moons))[0]
    together = fit_batch([wider, member, faster, diverging], *splits(moons))
    assert len(together[0].result.history) == 4 and together[3].diverged
    assert_close(histories([alone])[0], histories(together)[1])
    assert together[1].result.best_epoch == alone.result.best_epoch


@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_one_member_follows_train_fit(small_config, moons, kind):
    """Same batch order, noise (the batch's noise count is a multiple of 16, see fit_batch), initial weights."""
    config = variant(small_config, {"model": kind}, batch_size=32, max_epochs=20, lr=3e-2, lr_patience=3)
    network = build_model(config.model, config.train.seed)
    expected = fit(network, moons.train, moons.val, config.train)
    [member] = fit_batch([config], *splits(moons))
    assert_close(histories([member])[0], [epoch.as_dict() for epoch in expected.history], rel=1e-4)
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
