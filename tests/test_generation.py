"""The sampling sources of a trained model: the rule that picks the default, and the judgement every run logs."""

import math
from dataclasses import replace

import pytest
import torch

from moonvae.config import SOURCES, RunConfig
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit, one_torch_thread
from moonvae.sampling import quality, sources


def scores(summary: float, error: float = 0.01, copying=1.0, spacing=1.0, c2st=0.5, **more) -> dict:
    return {
        "mmd_summary": summary,
        "mmd_summary_se": error,
        "copying": copying,
        "spacing": spacing,
        "c2st": c2st,
    } | more


def test_the_default_is_the_sound_source_with_the_lowest_summary_where_the_uncertainty_tells():
    assert sources.choose({"posterior": scores(1.8), "prior": scores(20), "mixture": scores(1.1)})[0] == "mixture"
    # the lowest summary, but its samples sit on the training points: not the default
    default, reasons = sources.choose({"posterior": scores(0.9, copying=0.6), "mixture": scores(1.3)})
    assert default == "mixture" and reasons == {"posterior": "copying 0.6 < 0.9"}
    clumps = {"mixture": scores(0.8, spacing=0.5), "posterior": scores(1.4)}
    assert sources.choose(clumps) == ("posterior", {"mixture": "spacing 0.5 < 0.8"})
    told_apart = {"mixture": scores(0.8, c2st=0.7), "posterior": scores(1.4)}
    assert sources.choose(told_apart)[0] == "posterior"
    wrong_moon = {"prior": scores(1.0, on_moon=0.6), "posterior": scores(1.4, on_moon=0.99)}
    assert sources.choose(wrong_moon) == ("posterior", {"prior": "on_moon 0.6 < 0.9"})
    # nothing sound: the lowest summary all the same
    assert sources.choose({"posterior": scores(3, copying=0.5), "prior": scores(2, spacing=0.1)})[0] == "prior"


def test_between_sources_the_uncertainty_cannot_tell_apart_the_stated_preference_decides():
    # the mixture is lower, by less than two standard errors of the difference (0.28): the posterior, preferred
    close = {"posterior": scores(3.7, 0.2), "prior": scores(40, 1), "mixture": scores(3.5, 0.2)}
    assert sources.choose(close)[0] == "posterior" == sources.PREFERENCE[0]
    # the same difference, measured ten times as finely: the mixture is clearly better
    fine = {"posterior": scores(3.7, 0.02), "prior": scores(40, 1), "mixture": scores(3.5, 0.02)}
    assert sources.choose(fine)[0] == "mixture"
    # the prior, last in preference, only where both others are clearly worse
    assert sources.choose({"prior": scores(3.5, 0.2), "mixture": scores(3.7, 0.2)})[0] == "mixture"
    assert sources.choose({"prior": scores(2.0, 0.1), "mixture": scores(3.7, 0.2)})[0] == "prior"


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
        return sources.judge_sources(network, bank, fitted, moons.train.x, config.data.noise, **options)


@pytest.fixture(scope="module")
def judgement(trained):
    return judged(trained)


def test_every_source_is_judged_on_the_same_references_and_logged_by_name(trained, judgement):
    assert list(judgement.scores) == list(SOURCES)
    assert judgement.scores["mixture"]["on_moon"] > 0.9 and judgement.scores["prior"]["mmd_summary"] > 2
    # each source judged until its summary is known to VALIDATION_ERROR, or for VALIDATION_SETS sets
    for one in judgement.scores.values():
        assert quality.MIN_SETS <= one["sets"] <= sources.VALIDATION_SETS
        precise = one["mmd_summary_se"] <= sources.VALIDATION_ERROR * one["mmd_summary"]
        assert precise or one["sets"] == sources.VALIDATION_SETS
    # the default is sound, and no sound source has a summary lower by more than two standard errors
    default = judgement.scores[judgement.default]
    assert judgement.default not in judgement.reasons
    for source, one in judgement.scores.items():
        if source not in judgement.reasons:
            spread = math.hypot(
                one["mmd_summary_se"] / one["mmd_summary"], default["mmd_summary_se"] / default["mmd_summary"]
            )
            assert math.log(default["mmd_summary"] / one["mmd_summary"]) <= 2 * spread, source
    metrics = judgement.metrics()
    expected = {f"{source}_{score}{end}" for source in SOURCES for score in quality.SCORES for end in ("", "_se")}
    assert set(metrics) == expected | {f"{source}_{sets}" for source in SOURCES for sets in ("sets", "check_sets")}
    assert all(math.isfinite(value) for value in metrics.values())
    # one source judged alone scores what it scores among the others: the same references, the same draws
    config, moons, network = trained
    prior = judgement.scores["prior"]
    options = dict(seed=sources.VALIDATION_SEED, conditional=True)
    alone = quality.judge(
        sources.prior_sampler(network), moons.train.x.numpy(), config.data.noise, sets=prior["sets"], **options
    )
    assert alone == pytest.approx(prior, rel=1e-9)  # BLAS sums may differ in the last bit
    again = judged(trained).scores  # same seed, same numbers
    assert all(again[source] == pytest.approx(judgement.scores[source], rel=1e-9) for source in SOURCES)


def test_the_note_names_the_default_with_its_figures_their_errors_and_sets(judgement):
    note = judgement.note()
    assert note.startswith(f"Default source: {judgement.default}")
    for source, one in judgement.scores.items():
        summary = f"mmd_summary {one['mmd_summary']:.3g} +- {one['mmd_summary_se']:.2g}"
        sets = f"mmd: {one['sets']} sets, the others: {one['check_sets']}"
        assert f"- {source} ({sets}): {summary}, mmd_wide {one['mmd_wide']:.3g} +-" in note
    for reason in judgement.reasons.values():
        assert f"not sound: {reason}" in note


def test_a_model_without_a_mixture_is_judged_on_the_others(trained):
    judgement = judged(trained, mixture=None, sets=1)
    assert list(judgement.scores) == ["posterior", "prior"] and math.isnan(judgement.scores["prior"]["mmd_summary_se"])
    assert judgement.scores["prior"]["sets"] == 1 and "prior_mmd_summary_se" in judgement.metrics()


def test_the_mixture_samples_the_latents_of_the_requested_moon(trained):
    _, moons, network = trained
    mixture = sources.fit_latent_mixture(network, moons, seed=0)
    assert mixture["labels"].tolist() == [0, 1]
    assert torch.equal(mixture["components"], sources.fit_latent_mixture(network, moons, seed=0)["components"])
    assert max(mixture["components"].tolist()) <= max(sources.MIXTURE_COMPONENTS)
    vae = build_model(replace(network.config, model="vae"), seed=0)
    assert sources.fit_latent_mixture(vae, moons, seed=0)["labels"].tolist() == []  # one mixture for the VAE


def test_the_screening_scores_the_held_sources_mmd_on_the_validation_references(trained):
    """A screened model: posterior and prior, MMD only, on the first sets the validation judgement also drew."""
    config, moons, network = trained
    bank = latent_bank(network, moons.train.x, moons.train.y)
    with one_torch_thread():
        screened = sources.screen_sources(network, bank, moons.train.x, config.data.noise)
    assert list(screened.scores) == ["posterior", "prior"] and not screened.reasons
    full = judged(trained, mixture=None, sets=sources.SCREENING_SETS, check_sets=0, target_error=None).scores
    for source, one in screened.scores.items():
        assert one["sets"] == sources.SCREENING_SETS and one["check_sets"] == 0 and "c2st" not in one
        assert 0 < one["mmd_summary_se"] < one["mmd_summary"]
        assert one == pytest.approx(full[source], rel=1e-9)
    # the rule on the MMD alone: the prior, far off, is clearly worse than the posterior
    assert screened.default == "posterior" and screened.mmd_summary == screened.scores["posterior"]["mmd_summary"]
