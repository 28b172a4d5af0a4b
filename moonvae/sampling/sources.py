"""A trained model's sampling sources, judged: the latent mixture fitted, every source scored, the default chosen.

A model decodes latents from one of three sources (`config.SOURCES`):
- prior: z from the model's prior, N(0, I) or its VampPrior, the textbook sample; with the
  study's loss and a small eps_w or beta the decoder never saw most of N(0, I).
- posterior: the aggregate posterior, a random training point's q(z|x) with its eps_w
  noise: what the decoder was trained on, but it only ever revisits training points.
- mixture: a Gaussian mixture fitted to the training latents' means (one per moon for
  the CVAE; `density.fit_mixture`), its number of components chosen on the validation
  latents, with the noise the decoder saw in training: the same region, gaps filled.

Every train run and trial judges each source (`quality.judge_all`: TRIAL_SETS sets of
2000 points against exact references). All runs use VALIDATION_SEED, so every run and
every source meets the same references and their scores compare pairwise. These are
the validation judgements: the default source, the generative objective and the
`generator` alias are chosen on them. `analyse` judges again with FULL_SETS sets and
references from its own seed, so the figures it reports were not the ones chosen on.

The default source is the sound source with the lowest mmd_ratio; a source is sound
unless its scores say it copies or clumps: copying < COPYING_MIN, spacing <
SPACING_MIN, c2st > C2ST_MAX or (CVAE) on_moon < ON_MOON_MIN. With no sound source,
the lowest mmd_ratio.

Pure: torch models and tensors in, numbers out; no MLflow, no Optuna.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moonvae.config import SOURCES
from moonvae.core.data import MoonsData, Split
from moonvae.core.models import VAE, LatentBank, latent_bank
from moonvae.sampling import density, quality

VALIDATION_SEED = 1_000_003  # judge() seed of every run: the same references for all; analyse's --seed is another
# density's candidates up to 50: on the default VAE a 100-component fit took 0.33 s of the fit's 0.59 and lost to 50
MIXTURE_COMPONENTS = (1, 2, 5, 10, 20, 50)
COPYING_MIN = 0.9  # below: samples sit closer to the training points than fresh data does: copies
SPACING_MIN = 0.8  # below: samples clump tighter than the data (which the MMD's wide kernel smooths over)
C2ST_MAX = 0.6  # above: a classifier tells the samples from real points, whatever the MMD says
ON_MOON_MIN = 0.9  # CVAE: below, too many samples land on the moon not asked for
SCORES = ("mmd_ratio", "mmd_ratio_std", "c2st", "copying", "spacing", "on_moon")  # logged per source
NOTE_SCORES = ("mmd_ratio", "c2st", "copying", "spacing", "on_moon")  # quoted in a model's description


@dataclass(frozen=True)
class Judgement:
    """Every source's scores (quality.judge's, unprefixed), and the default source the rule picked."""

    scores: dict[str, dict[str, float]]
    default: str
    sets: int
    reasons: dict[str, str]  # why a source is not sound, for those that are not

    @property
    def mmd_ratio(self) -> float:
        """The default source's mmd_ratio: the model's sample quality, the generative objective."""
        return self.scores[self.default]["mmd_ratio"]

    @property
    def mmd_floor(self) -> float:
        return next(iter(self.scores.values()))["mmd_floor"]

    def metrics(self) -> dict[str, float]:
        """`<source>_<score>` for every source and score: names sort by source in the MLflow UI."""
        return {
            f"{source}_{score}": scores[score]
            for source, scores in self.scores.items()
            for score in SCORES
            if score in scores
        }

    def note(self) -> str:
        """Which source is the default, and why, with the figures (a model's description)."""
        lines = [
            f"Default source: {self.default}, the sound source with the lowest MMD ratio on the validation "
            f"judgement ({self.sets} sets of {quality.N_POINTS} points against exact draws):"
        ]
        for source, scores in self.scores.items():
            figures = ", ".join(f"{score} {scores[score]:.3g}" for score in NOTE_SCORES if score in scores)
            verdict = f"; not sound: {self.reasons[source]}" if source in self.reasons else ""
            lines.append(f"- {source}: {figures}{verdict}")
        return "\n".join(lines)


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


def samplers(network: VAE, bank: LatentBank, mixture: dict[str, torch.Tensor] | None) -> dict[str, quality.Sampler]:
    """Each source the model holds (the mixture only when there is one), in SOURCES order."""
    made = {"posterior": quality.posterior_sampler(network, bank), "prior": quality.prior_sampler(network)}
    if mixture is not None:
        made["mixture"] = quality.mixture_sampler(network, mixture)
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
    """Why a source's samples copy or clump ('' when they do neither)."""
    reasons = []
    if scores["copying"] < COPYING_MIN:
        reasons.append(f"copying {scores['copying']:.3g} < {COPYING_MIN}")
    if scores["spacing"] < SPACING_MIN:
        reasons.append(f"spacing {scores['spacing']:.3g} < {SPACING_MIN}")
    if scores["c2st"] > C2ST_MAX:
        reasons.append(f"c2st {scores['c2st']:.3g} > {C2ST_MAX}")
    if scores.get("on_moon", 1.0) < ON_MOON_MIN:
        reasons.append(f"on_moon {scores['on_moon']:.3g} < {ON_MOON_MIN}")
    return ", ".join(reasons)


def choose(scores: dict[str, dict[str, float]]) -> tuple[str, dict[str, str]]:
    """The default source (the sound one with the lowest mmd_ratio, else the lowest) and why the others are unsound."""
    reasons = {source: why for source, one in scores.items() if (why := unsound(one))}
    sound = [source for source in scores if source not in reasons] or list(scores)
    return min(sound, key=lambda source: scores[source]["mmd_ratio"]), reasons


def judge_sources(
    network: VAE,
    bank: LatentBank,
    mixture: dict[str, torch.Tensor] | None,
    train_x: torch.Tensor,
    noise: float,
    *,
    sets: int = quality.TRIAL_SETS,
    seed: int = VALIDATION_SEED,
    floor_cache: Path | None = None,
) -> Judgement:
    """Every source the model holds, judged on the same references; the default chosen by the rule."""
    network.eval()
    scores = quality.judge_all(
        samplers(network, bank, mixture),
        train_x.numpy(),
        noise,
        sets=sets,
        seed=seed,
        conditional=bool(network.n_conditions),
        floor_cache=floor_cache,
    )
    default, reasons = choose(scores)
    return Judgement(scores, default, sets, reasons)
