"""The original study's nine findings, judged with their uncertainty on studies designed to answer them.

Every finding has a rule fixed before any number is seen, in its function's code and
docstring, with its thresholds defined right above it: an effect, a 95% interval for
it (`estimates`) and a bound; the interval alone decides the verdict (`verdicts`). A
missing study makes its part inconclusive, the evidence says what is missing.

Collapse is measured, not read off MSE and KL thresholds: by the information the
latent keeps about x, I(x; z) (`latent_stats.mutual_information`), against the
condition the claim compares with; a posterior has collapsed when it keeps less
than half of it. Active units are quoted beside it, not judged: Burda's 0.01
counts units with a signal-to-noise ratio of 0.01 as active: a default VAE at
eps_w = 1 (300 epochs, seed 2) whose reconstructions were hardly better than the
data's mean (test MSE 0.42) had 24 of them, and kept 0.44 nats against 2.4 at
eps_w = 0.1.

Input: one `StudyTable` per (model, space) of the `importance`, `capacity`,
`data-seeds` and `probabilistic-seeds` studies (`estimates.COLUMNS`), and the
champions' per-fold latent moon accuracies; a t interval over those folds for
finding 9. Pure pandas, numpy and scipy: no Optuna, no MLflow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats

from moonvae.analysis import estimates, intervals
from moonvae.analysis.estimates import StudyTables
from moonvae.analysis.intervals import CONFIDENCE
from moonvae.analysis.verdicts import Finding, Part, decide, fmt
from moonvae.config import MODELS, SpaceName

MIN_DECADES = 0.05  # the least MSE difference that counts as "worse" or "better": a factor 1.12 (findings 2, 3, 7, 8)
COLLAPSED = 0.5  # 4, 8: a collapsed posterior keeps less than half the I(x; z) of the condition it is compared with


def _label(space: str, *models: str) -> str:
    """The study a part's evidence came from, as the report cites it."""
    return f"{space} ({', '.join(models)})"


MINOR_SHARE = 0.25  # lr and batch size explain under a quarter of what the five explain (equal shares: 0.4)


def lr_and_batch_size(tables: StudyTables) -> Finding:
    """1. Learning rate and batch size matter little.

    Rule: on each model's `importance` random search, lr and batch_size explain
    less than MINOR_SHARE of what the five parameters explain one by one:
    (S_lr + S_batch) / sum of S, S the first-order shares of the variance of log10
    best val MSE. Effect: the larger of the two models' ratios (both must hold).
    """
    part = Part("lr+batch_size share of explained variance", False, MINOR_SHARE, _label(SpaceName.IMPORTANCE, *MODELS))
    part = estimates.shares_part(part, tables, MODELS, lambda s: (s[:, 0] + s[:, 1]) / s.sum(axis=1))
    return decide(1, "Learning rate and batch size matter little.", [part])


SMALL, LARGE = 8, 32  # widths up to SMALL are small, from LARGE large (16 is neither)
CAPACITY_AXES = ("decoder_hidden", "latent_dim")  # the two widths that must grow together


def decoder_and_latent(tables: StudyTables) -> Finding:
    """2. Decoder width and latent size matter most; both must grow together.

    Rule (a): on the VAE `importance` search, the smaller of the decoder's and the
    latent size's first-order shares exceeds the largest of the other three (> 0).
    (b): on the VAE `capacity` grid, the interaction in mean log10 best val MSE:
    what a large decoder (>= LARGE) gains over a small one (<= SMALL) with a large
    latent, minus what it gains with a small latent, is above MIN_DECADES; one
    contrast per (encoder, seed) sub-grid, bootstrap of the sub-grids.
    """
    most = Part(
        "min(S_decoder, S_latent) - max(S_lr, S_batch, S_encoder)", True, 0.0, _label(SpaceName.IMPORTANCE, "vae")
    )
    most = estimates.shares_part(most, tables, ("vae",), lambda s: np.minimum(s[:, 3], s[:, 4]) - s[:, :3].max(axis=1))
    together = Part(
        "decoder's gain with a large - a small latent (decades)", True, MIN_DECADES, _label(SpaceName.CAPACITY, "vae")
    )
    claim = "Decoder width and latent size matter most; both must grow together."
    trials, missing = estimates.trials_of(tables, "vae", SpaceName.CAPACITY)
    if missing:
        return decide(2, claim, [most, replace(together, detail=missing)])
    decoder, latent = (np.select([trials[c] <= SMALL, trials[c] >= LARGE], [0, 1], -1) for c in CAPACITY_AXES)
    kept = (decoder >= 0) & (latent >= 0)  # 16-wide is neither small nor large
    quadrants = trials.assign(quadrant=latent + 2 * decoder, log_mse=estimates.log_mse(trials))[kept]
    # one contrast per (encoder, seed) sub-grid; quadrant 0 both small, 1 latent large, 2 decoder large, 3 both large
    sub_grids = estimates.pairing(trials, "encoder_hidden")
    means = quadrants.pivot_table("log_mse", sub_grids, "quadrant").reindex(columns=range(4)).dropna().to_numpy()
    if len(means) < estimates.MIN_UNITS:
        detail = f"{len(means)} (encoder, seed) sub-grids with all four quadrants (need {estimates.MIN_UNITS})"
        return decide(2, claim, [most, replace(together, detail=detail)])
    contrasts = (means[:, 1] - means[:, 3]) - (means[:, 0] - means[:, 2])
    detail = f"{len(means)} (encoder, seed) sub-grids; mean log10 best val MSE " + ", ".join(
        f"{name} {fmt(mean)}"
        for name, mean in zip(("both small", "latent large", "decoder large", "both large"), means.mean(0), strict=True)
    )
    estimate = intervals.bootstrap(lambda index: contrasts[index].mean(axis=1), np.zeros(len(contrasts)))
    return decide(2, claim, [most, replace(together, **estimates.numbers(estimate), detail=detail)])


WIDE_ENCODER = 8  # an encoder wider than this


def wide_encoder(tables: StudyTables) -> Finding:
    """3. An encoder wider than 8 makes the VAE worse.

    Rule: on the VAE `capacity` grid, matched by (decoder, latent[, seed]), the
    mean log10 best val MSE of encoders wider than WIDE_ENCODER minus that of the
    narrower ones is above MIN_DECADES; bootstrap of the matched differences.
    """
    part = Part("log10 MSE, encoder > 8 - encoder <= 8", True, MIN_DECADES, _label(SpaceName.CAPACITY, "vae"))
    part = estimates.paired_part(
        part,
        tables,
        ("vae",),
        SpaceName.CAPACITY,
        estimates.log_mse,
        ("decoder_hidden", "latent_dim"),
        lambda t: t["encoder_hidden"] > WIDE_ENCODER,
        lambda t: t["encoder_hidden"] <= WIDE_ENCODER,
    )
    return decide(3, "An encoder wider than 8 makes the VAE worse.", [part])


TINY = 4  # encoder and decoder at most this wide


def tiny_networks(tables: StudyTables) -> Finding:
    """4. A tiny encoder and decoder give posterior collapse (smooth latent, poor reconstruction).

    Rule: on the VAE `capacity` grid, the trials with encoder and decoder at most
    TINY wide keep less than COLLAPSED of the I(x; z) the other trials keep (mean
    over mean); bootstrap of the trials within the two groups.
    """
    claim = "A tiny encoder and decoder give posterior collapse (smooth latent, poor reconstruction)."
    part = Part("I(x;z) kept by tiny networks, of the others'", False, COLLAPSED, _label(SpaceName.CAPACITY, "vae"))
    trials, missing = estimates.trials_of(tables, "vae", SpaceName.CAPACITY)
    if missing:
        return decide(4, claim, [replace(part, detail=missing)])
    tiny = (trials["encoder_hidden"] <= TINY) & (trials["decoder_hidden"] <= TINY)
    return decide(4, claim, [estimates.information_part(part, trials.assign(model="vae"), tiny, ~tiny)])


WELL, TUNED_QUANTILE = 2.0, 0.1  # within 2x of the model's 10th-percentile MSE (its best is one lucky trial)
WIDER = 0.1  # the CVAE reconstructs well over at least 10 points more of the search space


def cvae_robust(tables: StudyTables) -> Finding:
    """5. The CVAE reconstructs well across a wide range of hyperparameters.

    Rule: on the `importance` random searches, the share of trials whose best val
    MSE is within WELL x the model's TUNED_QUANTILE quantile (what tuning reaches)
    is larger for the CVAE than for the VAE by more than WIDER; bootstrap of the
    trials, each model resampled on its own.
    """
    claim = "The CVAE reconstructs well across a wide range of hyperparameters."
    part = Part("share within 2x of tuned MSE, CVAE - VAE", True, WIDER, _label(SpaceName.IMPORTANCE, *MODELS))
    rows, missing = estimates.stacked(tables, MODELS, SpaceName.IMPORTANCE, estimates.MIN_TRIALS)
    if missing:
        return decide(5, claim, [replace(part, detail=missing)])
    values = rows["value"].to_numpy()
    vae, cvae = ((rows["model"] == model).to_numpy() for model in MODELS)

    def share(index: np.ndarray) -> np.ndarray:
        resampled = values[index]
        return (resampled <= WELL * np.quantile(resampled, TUNED_QUANTILE, axis=1, keepdims=True)).mean(axis=1)

    detail = ", ".join(
        f"{name} {fmt(share(np.flatnonzero(mask)[None, :])[0])} of {mask.sum()} trials"
        f" (median best val MSE {fmt(np.median(values[mask]))})"
        for name, mask in zip(MODELS, (vae, cvae), strict=True)
    )
    estimate = intervals.bootstrap(lambda index: share(index[:, cvae]) - share(index[:, vae]), cvae.astype(int))
    return decide(5, claim, [replace(part, **estimates.numbers(estimate), detail=detail)])


SIZE_OVER_NOISE = 1 / 3  # size moves the CVAE's error less than a third as much as noise does


def data_size_and_noise(tables: StudyTables) -> Finding:
    """6. More data: less over-fitting; the CVAE's error depends on noise, hardly on size.

    Rule (a): on each model's `data-seeds` grid, matched by (noise, seed), the
    over-fitting gap log10(test MSE / train MSE) at the smallest size minus at the
    largest is above 0 (the study says "slightly reduced": only the direction is
    claimed); the smaller of the two models' means, bootstrap of the pairs.
    (b): on the CVAE's grid, the range of mean log10 best val MSE across sizes
    over its range across noise levels is below SIZE_OVER_NOISE; bootstrap of the
    seeds within each size x noise cell.
    """
    overfit = Part(
        "over-fitting gap, smallest - largest size (decades)", True, 0.0, _label(SpaceName.DATA_SEEDS, *MODELS)
    )
    overfit = estimates.paired_part(
        overfit,
        tables,
        MODELS,
        SpaceName.DATA_SEEDS,
        lambda t: np.log10(t["test_mse"] / t["train_mse"]),
        ("noise",),
        lambda t: t["n_samples"] == t["n_samples"].min(),
        lambda t: t["n_samples"] == t["n_samples"].max(),
    )
    noise_first = Part(
        "CVAE MSE range across sizes / across noise", False, SIZE_OVER_NOISE, _label(SpaceName.DATA_SEEDS, "cvae")
    )
    claim = "More data: less over-fitting; the CVAE's error depends on noise, hardly on size."
    return decide(6, claim, [overfit, _size_against_noise(tables, noise_first)])


def _size_against_noise(tables: StudyTables, part: Part) -> Part:
    trials, missing = estimates.trials_of(tables, "cvae", SpaceName.DATA_SEEDS)
    trials, note = (trials, "") if missing else estimates.replicated(trials, ["n_samples", "noise"])
    size, sizes = pd.factorize(trials.get("n_samples", pd.Series()), sort=True)
    noise, noises = pd.factorize(trials.get("noise", pd.Series()), sort=True)
    if missing or len(sizes) < 2 or len(noises) < 2:
        return replace(part, detail=missing or f"{len(sizes)} sizes, {len(noises)} noise levels replicated{note}")
    cell, shape = size * len(noises) + noise, (len(sizes), len(noises))
    y = intervals.widened(estimates.log_mse(trials).to_numpy(), cell)

    def ranges(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        means = intervals.cell_means(y[index], cell, len(sizes) * len(noises))[0].reshape(-1, *shape)
        return np.ptp(np.nanmean(means, axis=2), axis=1), np.ptp(np.nanmean(means, axis=1), axis=1)

    by_size, by_noise = ranges(np.arange(len(y))[None, :])
    detail = f"mean log10 best val MSE spans {fmt(by_noise[0])} across noise, {fmt(by_size[0])} across size{note}"
    return replace(
        part, **estimates.numbers(intervals.bootstrap(lambda index: np.divide(*ranges(index)), cell)), detail=detail
    )


SMALL_NOISE = 0.05  # the small noise that noise 0 is compared with


def zero_noise(tables: StudyTables) -> Finding:
    """7. Noise 0 is modelled worse than small noise.

    Rule: on each model's `data-seeds` grid, matched by (size, seed), log10 best
    val MSE at noise 0 minus at noise SMALL_NOISE is above MIN_DECADES; the
    smaller of the two models' means, bootstrap of the pairs.
    """
    part = Part(f"log10 MSE, noise 0 - noise {SMALL_NOISE}", True, MIN_DECADES, _label(SpaceName.DATA_SEEDS, *MODELS))
    part = estimates.paired_part(
        part,
        tables,
        MODELS,
        SpaceName.DATA_SEEDS,
        estimates.log_mse,
        ("n_samples",),
        lambda t: np.isclose(t["noise"], 0.0),
        lambda t: np.isclose(t["noise"], SMALL_NOISE),
    )
    return decide(7, "Noise 0 is modelled worse than small noise.", [part])


def eps_w_and_beta(tables: StudyTables) -> Finding:
    """8. eps_w = 1 collapses the posterior; smaller eps_w and beta sharpen reconstructions, less smooth latent.

    Rule (a): on each model's `probabilistic-seeds` grid, the trials at eps_w = 1,
    beta = 1 keep less than COLLAPSED of the I(x; z) kept at the study's eps_w =
    0.1, beta = 1 (mean over mean; the larger of the two models' ratios), seeds
    resampled within the cells. (b): fitting log10 best val MSE = c + s_e log10 eps_w
    + s_b log10 beta per model, the smallest of the four slopes is above
    MIN_DECADES per decade. (c): fitting I(x; z) so, the smallest of the four
    negated slopes is above 0 (a less smooth latent keeps more information).
    (b), (c): bootstrap of the seeds within each model x eps_w x beta cell.
    """
    claim = "eps_w = 1 collapses the posterior; smaller eps_w and beta sharpen reconstructions, less smooth latent."
    study = _label(SpaceName.PROBABILISTIC_SEEDS, *MODELS)
    parts = [
        Part("I(x;z) kept at eps_w 1, of eps_w 0.1 (beta 1)", False, COLLAPSED, study),
        Part("smallest slope of log10 MSE on log10 eps_w, beta", True, MIN_DECADES, study),
        Part("smallest slope of -I(x;z) on log10 eps_w, beta (nats)", True, 0.0, study),
    ]
    trials, missing = estimates.stacked(tables, MODELS, SpaceName.PROBABILISTIC_SEEDS)
    if not missing:
        trials, note = estimates.replicated(trials, ["model", "eps_w", "beta"])
        levels = trials.groupby("model")[["eps_w", "beta"]].nunique().reindex(list(MODELS)).fillna(0)
        missing = f"fewer than two replicated eps_w or beta levels per model{note}" if levels.min().min() < 2 else ""
    if missing:
        return decide(8, claim, [replace(part, detail=missing) for part in parts])
    textbook = np.isclose(trials["eps_w"], 1.0) & np.isclose(trials["beta"], 1.0)
    study_default = np.isclose(trials["eps_w"], 0.1) & np.isclose(trials["beta"], 1.0)
    parts[0] = estimates.information_part(parts[0], trials, textbook, study_default)
    parts[1] = _slopes(parts[1], trials, estimates.log_mse(trials).to_numpy(), note)
    parts[2] = _slopes(parts[2], trials, -trials["mutual_info"].to_numpy(), note)
    return decide(8, claim, parts)


def _slopes(part: Part, trials: pd.DataFrame, y: np.ndarray, note: str) -> Part:
    """The smallest slope of y on log10 eps_w and log10 beta over the models; seeds resampled within cells."""
    cell = pd.factorize(pd.MultiIndex.from_frame(trials[["model", "eps_w", "beta"]]))[0]
    y = intervals.widened(y, cell)
    fits = []  # per model: its rows and the least-squares map from y to (intercept, slope on eps_w, on beta)
    for model in MODELS:
        rows = (trials["model"] == model).to_numpy()
        design = np.column_stack([np.ones(rows.sum()), *(np.log10(trials[c][rows]) for c in ("eps_w", "beta"))])
        fits.append((rows, np.linalg.pinv(design)))

    def smallest(index: np.ndarray) -> np.ndarray:
        return np.concatenate([(y[index[:, rows]] @ solve.T)[:, 1:] for rows, solve in fits], axis=1).min(axis=1)

    slopes = [(solve @ y[rows])[1:] for rows, solve in fits]
    detail = "; ".join(f"{m}: on eps_w {fmt(s[0])}, on beta {fmt(s[1])}" for m, s in zip(MODELS, slopes, strict=True))
    return replace(part, **estimates.numbers(intervals.bootstrap(smallest, cell)), detail=f"slopes {detail}{note}")


SEPARATED = 0.9  # latent moon accuracy above which the moons are separated (0.5: they overlap)
LESS_SEPARATED = 0.1  # the CVAE's accuracy lower than the VAE's by at least this


def latent_separation(latent_accuracy: Mapping[str, float | Sequence[float]]) -> Finding:
    """9. The VAE latent space separates the moons; the CVAE latent space overlaps them.

    Input: each champion's per-fold accuracies of the k-NN that reads the moon off
    its training latents. Rule (a): the VAE's mean accuracy is above SEPARATED
    (t interval over the folds). (b): the VAE's accuracy exceeds the CVAE's by
    more than LESS_SEPARATED (Welch t interval of the difference).
    """
    claim = "The VAE latent space separates the moons; the CVAE latent space overlaps them."
    separates = Part("VAE latent moon accuracy", True, SEPARATED, "champions (vae)")
    overlaps = Part("VAE - CVAE latent moon accuracy", True, LESS_SEPARATED, "champions (vae, cvae)")
    vae, cvae = (np.atleast_1d(np.asarray(latent_accuracy.get(kind, ()), float)) for kind in MODELS)
    short = [kind for kind, folds in zip(MODELS, (vae, cvae), strict=True) if len(folds) < 2]
    if short:
        why = f"needs per-fold accuracies (two or more) of the {' and '.join(short)} champion"
        return decide(9, claim, [replace(separates, detail=why), replace(overlaps, detail=why)])
    with warnings.catch_warnings():  # folds that all agree: a zero-width interval, and a warning about it
        warnings.simplefilter("ignore", RuntimeWarning)
        one = stats.ttest_1samp(vae, SEPARATED).confidence_interval(CONFIDENCE)
        two = stats.ttest_ind(vae, cvae, equal_var=False).confidence_interval(CONFIDENCE)
    detail = f"{len(vae)} and {len(cvae)} folds, VAE {fmt(vae.mean())}, CVAE {fmt(cvae.mean())} (0.5: overlapping)"
    separates = replace(separates, effect=vae.mean(), low=one.low, high=one.high, detail=detail)
    overlaps = replace(overlaps, effect=vae.mean() - cvae.mean(), low=two.low, high=two.high, detail=detail)
    return decide(9, claim, [separates, overlaps])


CHECKS: tuple[Callable[[StudyTables], Finding], ...] = (
    lr_and_batch_size,
    decoder_and_latent,
    wide_encoder,
    tiny_networks,
    cvae_robust,
    data_size_and_noise,
    zero_noise,
    eps_w_and_beta,
)


def all_findings(tables: StudyTables, latent_accuracy: Mapping[str, float | Sequence[float]]) -> list[Finding]:
    """The nine findings: study tables by (model, space); the champions' per-fold latent moon accuracies by model."""
    return [check(tables) for check in CHECKS] + [latent_separation(latent_accuracy)]


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    def number(value: float) -> str:
        return "-" if math.isnan(value) else fmt(value)

    return pd.DataFrame(
        {
            "#": [f.number for f in findings],
            "finding": [f.claim for f in findings],
            "effect": [f"{number(f.effect)} ({f.rule})" for f in findings],
            "interval": ["-" if math.isnan(f.low) else f"[{fmt(f.low)}, {fmt(f.high)}]" for f in findings],
            "verdict": [f.verdict for f in findings],
            "study": [f.study for f in findings],
            "evidence": [f.evidence for f in findings],
        }
    )
