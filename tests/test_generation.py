"""The sampling sources of a trained model: the rule that picks the default, and the judgement every run logs."""

import math
from dataclasses import replace

import pytest
import torch
from conftest import FLOORS

from moonvae.config import SOURCES, RunConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit, one_torch_thread
from moonvae.sampling import quality, sources


def scores(mmd_ratio: float, copying: float = 1.0, spacing: float = 1.0, c2st: float = 0.5, **more) -> dict:
    return {"mmd_ratio": mmd_ratio, "copying": copying, "spacing": spacing, "c2st": c2st, **more}


def test_the_default_is_the_sound_source_with_the_lowest_mmd_ratio():
    assert sources.choose({"posterior": scores(1.8), "prior": scores(20), "mixture": scores(1.1)})[0] == "mixture"
    # the lowest MMD ratio, but its samples sit on the training points: not the default
    default, reasons = sources.choose({"posterior": scores(0.9, copying=0.6), "mixture": scores(1.3)})
    assert default == "mixture" and reasons == {"posterior": "copying 0.6 < 0.9"}
    clumps = {"mixture": scores(0.8, spacing=0.5), "posterior": scores(1.4)}
    assert sources.choose(clumps) == ("posterior", {"mixture": "spacing 0.5 < 0.8"})
    told_apart = {"mixture": scores(0.8, c2st=0.7), "posterior": scores(1.4)}
    assert sources.choose(told_apart)[0] == "posterior"
    wrong_moon = {"prior": scores(1.0, on_moon=0.6), "posterior": scores(1.4, on_moon=0.99)}
    assert sources.choose(wrong_moon) == ("posterior", {"prior": "on_moon 0.6 < 0.9"})
    # nothing sound: the lowest MMD ratio all the same
    assert sources.choose({"posterior": scores(3, copying=0.5), "prior": scores(2, spacing=0.1)})[0] == "prior"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CVAE trained well enough that its mixture and posterior beat its prior."""
    config = RunConfig.from_flat(
        {
            "model": "cvae",
            "n_samples": 600,
            "latent_dim": 8,
            "decoder_hidden": "32",
            "max_epochs": 100,
            "batch_size": 64,
        }
    )
    moons = data.load(config.data, tmp_path_factory.mktemp("data"))
    with one_torch_thread():
        network = build_model(config.model, config.train.seed)
        fit(network, moons.train, moons.val, config.train)
    return config, moons, network


def judged(trained, mixture="fit", **options):
    config, moons, network = trained
    with one_torch_thread():
        fitted = sources.fit_latent_mixture(network, moons, seed=0) if mixture == "fit" else mixture
        bank = latent_bank(network, moons.train.x, moons.train.y)
        options = {"floor_cache": FLOORS} | options
        return sources.judge_sources(network, bank, fitted, moons.train.x, config.data.noise, **options)


def test_every_source_is_judged_on_the_same_references_and_logged_by_name(trained):
    judgement = judged(trained)
    assert list(judgement.scores) == list(SOURCES)
    assert judgement.scores["mixture"]["on_moon"] > 0.9 and judgement.scores["prior"]["mmd_ratio"] > 2
    assert judgement.default in ("posterior", "mixture")  # the prior is far off with eps_w = 0.1
    assert judgement.mmd_ratio == judgement.scores[judgement.default]["mmd_ratio"]
    assert judgement.mmd_floor == quality.mmd_floor(trained[0].data.noise, cache_dir=FLOORS).mmd
    metrics = judgement.metrics()
    assert set(metrics) == {f"{source}_{score}" for source in SOURCES for score in sources.SCORES}
    assert all(math.isfinite(value) for value in metrics.values())
    # one source judged alone scores what it scores among the others: the same references, the same draws
    _, moons, network = trained
    alone = quality.judge(
        quality.prior_sampler(network),
        moons.train.x.numpy(),
        trained[0].data.noise,
        seed=sources.VALIDATION_SEED,
        conditional=True,
        floor_cache=FLOORS,
    )
    assert alone == pytest.approx(judgement.scores["prior"], rel=1e-9)  # BLAS sums may differ in the last bit
    again = judged(trained).scores  # same seed, same numbers
    assert all(again[source] == pytest.approx(judgement.scores[source], rel=1e-9) for source in SOURCES)


def test_the_note_names_the_default_with_its_figures(trained):
    judgement = judged(trained)
    note = judgement.note()
    assert note.startswith(f"Default source: {judgement.default}")
    for source in SOURCES:
        assert f"- {source}: mmd_ratio {judgement.scores[source]['mmd_ratio']:.3g}" in note
    for reason in judgement.reasons.values():
        assert f"not sound: {reason}" in note


def test_a_model_without_a_mixture_is_judged_on_the_others(trained):
    judgement = judged(trained, mixture=None, sets=1)
    assert list(judgement.scores) == ["posterior", "prior"] and math.isnan(judgement.scores["prior"]["mmd_ratio_std"])
    assert "prior_mmd_ratio_std" in judgement.metrics()


def test_the_mixture_samples_the_latents_of_the_requested_moon(trained):
    _, moons, network = trained
    mixture = sources.fit_latent_mixture(network, moons, seed=0)
    assert mixture["labels"].tolist() == [0, 1]
    assert torch.equal(mixture["components"], sources.fit_latent_mixture(network, moons, seed=0)["components"])
    assert max(mixture["components"].tolist()) <= max(sources.MIXTURE_COMPONENTS)
    vae = build_model(replace(network.config, model="vae"), seed=0)
    assert sources.fit_latent_mixture(vae, moons, seed=0)["labels"].tolist() == []  # one mixture for the VAE
