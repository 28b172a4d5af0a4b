"""A trained model's sampling sources, judged: the latent mixture fitted, every source scored, the default chosen.

A model decodes latents from one of three sources (`config.SOURCES`):
- prior: z from the model's prior, N(0, I) or its VampPrior, the textbook sample; with the
  study's loss and a small eps_w or beta the decoder never saw most of N(0, I).
- posterior: the aggregate posterior, a random training point's q(z|x) with its eps_w
  noise: what the decoder was trained on, but it only ever revisits training points.
- mixture: a Gaussian mixture fitted to the training latents' means (one per moon for
  the CVAE; `density.fit_mixture`), its number of components chosen on the validation
  latents, with the noise the decoder saw in training: the same region, gaps filled.

A judgement is full where its result is used, and a screening where nothing is decided on it:
- validation (`judge_sources`): the latent mixture fitted, each source judged
  (`quality.judge_all`) on sets of 2000 points until its MMD summary's standard error is
  VALIDATION_ERROR (5%: 14-24 sets for a default model's sound sources, 4 for its prior;
  bench/quality_speed.py), at most VALIDATION_SETS; C2ST, copying, spacing and on-moon on
  the first quality.CHECK_SETS. The default source, the generative objective and the
  `generator` alias are chosen on it. Every `train` run gets it, and of a study's trials
  those whose model may be used (tuning/trials.py says which).
- screening (`screen_sources`): the sources the model holds without a fit (posterior and
  prior) on SCREENING_SETS sets, MMD only, under the same metric names with their standard
  errors and `<source>_sets`: ~0.03-0.04 s of CPU against 0.4-0.8 s (bench/generation_cost.py).
All judgements use VALIDATION_SEED, so every run and every source meets the same
references and their scores compare pairwise.
`analyse` judges again with quality's FULL_SETS and samples and references from its own
seed, so the figures it reports were not the ones chosen on.

The default source is chosen among the sound sources on the MMD summary, with its
uncertainty: the first source of PREFERENCE whose summary is not clearly worse than
the lowest (`quality.clearly_worse`). The order prefers the aggregate posterior: it is
what the decoder was trained on, it needs no fitted density, and models logged before
they chose a source sample from it; then the mixture, which fills the posterior's gaps;
the prior last, which the decoder mostly never saw. A source is sound unless its scores
say it copies or clumps: copying < COPYING_MIN, spacing < SPACING_MIN, c2st > C2ST_MAX or
(CVAE) on_moon < ON_MOON_MIN. With no sound source, the rule runs over all of them.

Pure: torch models and tensors in, numbers out; no MLflow, no Optuna.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from moonvae.config import SOURCES
from moonvae.core.data import MoonsData, Split
from moonvae.core.models import VAE, LatentBank, latent_bank
from moonvae.sampling import density, quality

VALIDATION_SEED = 1_000_003  # judge() seed of every run: the same references for all; analyse's --seed is another
VALIDATION_ERROR = 0.05  # a run judges each source until its MMD summary's relative standard error is this
VALIDATION_SETS = 64  # or for this many sets (an exact sampler needs ~47; bench/quality_speed.py)
# density's candidates up to 50: on the default VAE a 100-component fit took 0.33 s of the fit's 0.59 and lost to 50
MIXTURE_COMPONENTS = (1, 2, 5, 10, 20, 50)
SCREENING_SETS = 2  # a screened trial's sets a source: the fewest that give a standard error, ~8-10 ms a set a source
PREFERENCE = ("posterior", "mixture", "prior")  # the default between sources the uncertainty cannot tell apart
COPYING_MIN = 0.9  # below: samples sit closer to the training points than fresh data does: copies
SPACING_MIN = 0.8  # below: samples clump tighter than the data
C2ST_MAX = 0.6  # above: a classifier tells the samples from real points, whatever the MMD says
ON_MOON_MIN = 0.9  # CVAE: below, too many samples land on the moon not asked for
NOTE_SCORES = ("mmd_summary", "mmd_wide", "mmd_mid", "mmd_fine", "c2st", "copying", "spacing", "on_moon")


@dataclass(frozen=True)
class Judgement:
    """Every source's scores (quality.judge's, unprefixed, with their `_se`), and the default source the rule picked."""

    scores: dict[str, dict[str, float]]
    default: str
    reasons: dict[str, str]  # why a source is not sound, for those that are not

    @property
    def mmd_summary(self) -> float:
        """The default source's MMD summary: the model's sample quality, the generative objective."""
        return self.scores[self.default]["mmd_summary"]

    @property
    def mmd_summary_se(self) -> float:
        return self.scores[self.default]["mmd_summary_se"]

    def metrics(self) -> dict[str, float]:
        """`<source>_<score>` and `<source>_<score>_se` for every source and score: by source in the MLflow UI."""
        return {f"{source}_{key}": value for source, scores in self.scores.items() for key, value in scores.items()}

    def note(self) -> str:
        """Which source is the default, and why, with the figures and their standard errors (a model's description)."""
        lines = [
            f"Default source: {self.default}, chosen on the MMD summary of the validation judgement (sets of "
            f"{quality.N_POINTS} points against the distribution itself; +- is the standard error over the sets): the "
            f"first sound source of {', '.join(PREFERENCE)} whose summary is not above the lowest by more than "
            f"{quality.SIGNIFICANCE:g} standard errors of their difference."
        ]
        for source, scores in self.scores.items():
            figures = ", ".join(figure(scores, score) for score in NOTE_SCORES if score in scores)
            verdict = f"; not sound: {self.reasons[source]}" if source in self.reasons else ""
            sets = f"mmd: {scores['sets']} sets, the others: {scores['check_sets']}"
            lines.append(f"- {source} ({sets}): {figures}{verdict}")
        return "\n".join(lines)


def figure(scores: dict[str, float], score: str) -> str:
    """`mmd_summary 3.77 +- 0.12`: a score with its standard error, as every description quotes it."""
    return f"{score} {scores[score]:.3g} +- {scores[score + '_se']:.2g}"


def fit_latent_mixture(network: VAE, data: MoonsData, seed: int) -> dict[str, torch.Tensor]:
    """The latent mixture of a trained network: fitted to the training latents, components chosen on the validation's.

    Carries the decoder's training noise (`density.training_noise`); plain tensors, as `density.sample_mixture` reads.
    """
    train = latent_bank(network, data.train.x, data.train.y)
    val = latent_bank(network, data.val.x, data.val.y)
    labels = (train.y, val.y) if network.n_conditions else (None, None)
    noise = density.training_noise(train.logvar, network.config.eps_w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a mixture that EM did not settle in 100 steps is still a mixture
        return density.fit_mixture(
            train.mean, labels[0], val.mean, labels[1], seed=seed, train_noise=noise, components=MIXTURE_COMPONENTS
        )


def prior_sampler(network: VAE) -> quality.Sampler:
    """Decoded z ~ N(0, I)."""
    return lambda n, rng, labels: network.sample(n, labels, rng).numpy()


def posterior_sampler(network: VAE, bank: LatentBank) -> quality.Sampler:
    """Decoded draws of the aggregate posterior (a random bank entry's q(z|x), noise scaled by eps_w)."""
    return lambda n, rng, labels: network.sample_posterior(bank, n, labels, rng).numpy()


def mixture_sampler(network: VAE, mixture: dict[str, torch.Tensor]) -> quality.Sampler:
    """Decoded draws of a latent mixture fitted by `density.fit_mixture`."""

    @torch.inference_mode()
    def sample(n: int, rng: torch.Generator, labels: torch.Tensor | None) -> np.ndarray:
        return network.draw_point(density.sample_mixture(mixture, n, labels, rng), labels, rng).numpy()

    return sample


def samplers(network: VAE, bank: LatentBank, mixture: dict[str, torch.Tensor] | None) -> dict[str, quality.Sampler]:
    """Each source the model holds (the mixture only when there is one), in SOURCES order."""
    made = {"posterior": posterior_sampler(network, bank), "prior": prior_sampler(network)}
    if mixture is not None:
        made["mixture"] = mixture_sampler(network, mixture)
    return {source: made[source] for source in SOURCES if source in made}


@dataclass(frozen=True)
class Samples:
    """What an evaluation drew, kept for the figures: real reference points and both kinds of samples."""

    reference: Split  # fresh real points; their labels are the labels requested from the model
    prior: np.ndarray  # the model's samples from its prior
    posterior: np.ndarray  # decoded z from the aggregate posterior (the training bank, eps_w noise)


def draw(network: VAE, bank: LatentBank, reference: Split, seed: int) -> Samples:
    """One sample per reference point, for the reference point's label, from the prior and the aggregate posterior."""
    labels = reference.y if network.n_conditions else None  # the VAE samples from the whole bank, blind to labels
    prior = network.sample(len(reference), labels, torch.Generator().manual_seed(seed)).numpy()
    posterior = network.sample_posterior(bank, len(reference), labels, torch.Generator().manual_seed(seed))
    return Samples(reference, prior, posterior.numpy())


def unsound(scores: dict[str, float]) -> str:
    """Why a source's samples copy or clump ('' when they do neither, or were not checked: a screening)."""
    reasons = []
    if scores.get("copying", 1.0) < COPYING_MIN:
        reasons.append(f"copying {scores['copying']:.3g} < {COPYING_MIN}")
    if scores.get("spacing", 1.0) < SPACING_MIN:
        reasons.append(f"spacing {scores['spacing']:.3g} < {SPACING_MIN}")
    if scores.get("c2st", 0.5) > C2ST_MAX:
        reasons.append(f"c2st {scores['c2st']:.3g} > {C2ST_MAX}")
    if scores.get("on_moon", 1.0) < ON_MOON_MIN:
        reasons.append(f"on_moon {scores['on_moon']:.3g} < {ON_MOON_MIN}")
    return ", ".join(reasons)


def choose(scores: dict[str, dict[str, float]]) -> tuple[str, dict[str, str]]:
    """The default source, and why the others are unsound: among the sound sources (all, if none is), the first of
    PREFERENCE whose MMD summary is not clearly worse than the lowest."""
    reasons = {source: why for source, one in scores.items() if (why := unsound(one))}
    sound = [source for source in scores if source not in reasons] or list(scores)
    best = scores[min(sound, key=lambda source: scores[source]["mmd_summary"])]

    def tied(one: dict[str, float]) -> bool:  # the lowest itself always is
        summary, error = one["mmd_summary"], one["mmd_summary_se"]
        return not quality.clearly_worse(summary, error, best["mmd_summary"], best["mmd_summary_se"])

    return next(source for source in sorted(sound, key=PREFERENCE.index) if tied(scores[source])), reasons


def judge_sources(
    network: VAE,
    bank: LatentBank,
    mixture: dict[str, torch.Tensor] | None,
    train_x: torch.Tensor,
    noise: float,
    *,
    sets: int = VALIDATION_SETS,
    check_sets: int = quality.CHECK_SETS,
    seed: int = VALIDATION_SEED,
    target_error: float | None = VALIDATION_ERROR,
) -> Judgement:
    """Every source the model holds, judged on the same references; the default chosen by the rule."""
    network.eval()
    scores = quality.judge_all(
        samplers(network, bank, mixture),
        train_x.numpy(),
        noise,
        sets=sets,
        check_sets=check_sets,
        seed=seed,
        conditional=bool(network.n_conditions),
        target_error=target_error,
    )
    default, reasons = choose(scores)
    return Judgement(scores, default, reasons)


def screen_sources(network: VAE, bank: LatentBank, train_x: torch.Tensor, noise: float) -> Judgement:
    """The screening judgement: the posterior's and the prior's MMD on SCREENING_SETS sets, no check scores.

    For a model no decision reads: its figures are honest (each with its standard error and
    sets) but rough, and its default source is chosen by the same rule on the MMD alone.
    """
    return judge_sources(network, bank, None, train_x, noise, sets=SCREENING_SETS, check_sets=0, target_error=None)
