"""The original study's nine findings, judged with their uncertainty on studies designed to answer them.

Every finding has a rule fixed before any number is seen, in its function's code and
docstring: an effect (one number, oriented so that the claim says where it lies), a
95% interval for it, and a bound, the smallest effect that counts as support. The
verdict follows from the interval alone:

  reproduced    the whole interval lies on the claim's side of the bound
  refuted       the whole interval lies on the other side
  inconclusive  the interval contains the bound, or the data to compute it are missing

Noise cannot decide a verdict: it widens the interval until the verdict is
inconclusive. A finding made of several claims ("A; B") is reproduced when every
part is, refuted when any part is, inconclusive otherwise; its effect and interval
are those of the part that decided. A missing study makes its part inconclusive
(effect and interval empty, the evidence says what is missing): no fourth verdict.

Intervals: percentile bootstrap (2000 resamples, fixed seed) of the trials,
resampled within the design's cells (spread corrected for few seeds) or models,
or of paired differences; a t
interval over the cross-validation folds for the latent moon accuracy. MSEs are
compared as log10 (decades): across these designs errors span orders of magnitude
and "worse" means a ratio.

Collapse is measured, not read off MSE and KL thresholds: by the information the
latent keeps about x, I(x; z) (`latent_stats.mutual_information`), against the
condition the claim compares with; a posterior has collapsed when it keeps less
than half of it. Active units are quoted beside it, not judged: Burda's 0.01
counts units with a signal-to-noise ratio of 0.01 as active: a default VAE at
eps_w = 1 (300 epochs, seed 2) whose reconstructions were hardly better than the
data's mean (test MSE 0.42) had 24 of them, and kept 0.44 nats against 2.4 at
eps_w = 0.1.

Input: one `StudyTable` per (model, space) for the spaces below, their completed
trials as a DataFrame (searched params, `value` = best validation MSE, recorded
metrics: `COLUMNS`), and the champions' per-fold latent moon accuracies.
Pure pandas, numpy and scipy: no Optuna, no MLflow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from moonvae.analysis import intervals
from moonvae.analysis.intervals import CONFIDENCE
from moonvae.config import MODELS, SpaceName
from moonvae.tuning.tables import StudyTable

# The spaces whose studies the findings read, each run for both models unless said otherwise.
IMPORTANCE = SpaceName.IMPORTANCE  # random search of the basic distributions, no pruning: findings 1, 2, 5
CAPACITY = SpaceName.CAPACITY  # VAE grid encoder x decoder x latent width: findings 2, 3, 4
DATA = SpaceName.DATA_SEEDS  # grid n_samples x noise x seed: findings 6, 7
PROBABILISTIC = SpaceName.PROBABILISTIC_SEEDS  # grid eps_w x beta x seed: finding 8
FINDINGS_SPACES = (IMPORTANCE, CAPACITY, DATA, PROBABILISTIC)

PARAMS = ("lr", "batch_size", "encoder_hidden", "latent_dim", "decoder_hidden")
CAPACITY_AXES = ("decoder_hidden", "latent_dim")  # finding 2: the two widths that must grow together
REPLICATE = "seed"  # the grid axis that repeats a cell; paired and cell-wise comparisons keep it apart
COLUMNS = {  # what each space's trial table must hold for its rules
    IMPORTANCE: (*PARAMS, "value"),
    CAPACITY: ("encoder_hidden", "latent_dim", "decoder_hidden", "value", "active_units", "mutual_info"),
    DATA: ("n_samples", "noise", REPLICATE, "value", "test_mse", "train_mse"),
    PROBABILISTIC: ("eps_w", "beta", REPLICATE, "value", "active_units", "mutual_info"),
}

REPRODUCED, REFUTED, INCONCLUSIVE = "reproduced", "refuted", "inconclusive"
MIN_TRIALS = 30  # per model: fewer random trials cannot rank five parameters
MIN_UNITS = 5  # pairs, or trials per group, a bootstrap needs: fewer make intervals narrower than the truth
MIN_REPLICATES = 2  # seeds per cell where trials are resampled within cells (one seed: no spread to resample)

MIN_DECADES = 0.05  # the least MSE difference that counts as "worse" or "better": a factor 1.12
LR_BINS = 6  # half-decade bins of the log-uniform lr over [1e-4, 1e-1], for its variance share
LR_LOG10_RANGE = (-4.0, -1.0)
MINOR_SHARE = 0.25  # 1: lr and batch size explain under a quarter of what the five explain (equal shares: 0.4)
SMALL, LARGE = 8, 32  # 2: widths up to SMALL are small, from LARGE large (16 is neither)
WIDE_ENCODER = 8  # 3: an encoder wider than this
TINY = 4  # 4: encoder and decoder at most this wide
COLLAPSED = 0.5  # 4, 8: a collapsed posterior keeps less than half the I(x; z) of the condition it is compared with
WELL, TUNED_QUANTILE = 2.0, 0.1  # 5: within 2x of the model's 10th-percentile MSE (its best is one lucky trial)
WIDER = 0.1  # 5: the CVAE reconstructs well over at least 10 points more of the search space
SIZE_OVER_NOISE = 1 / 3  # 6: size moves the CVAE's error less than a third as much as noise does
SMALL_NOISE = 0.05  # 7: the small noise that noise 0 is compared with
SEPARATED = 0.9  # 9: latent moon accuracy above which the moons are separated (0.5: they overlap)
LESS_SEPARATED = 0.1  # 9: the CVAE's accuracy lower than the VAE's by at least this


@dataclass(frozen=True)
class Finding:
    number: int
    claim: str
    evidence: str
    verdict: str
    effect: float = math.nan  # of the part that decided the verdict
    low: float = math.nan
    high: float = math.nan
    study: str = ""  # the spaces (and models) the evidence came from
    rule: str = ""  # the deciding part's effect and bound


Studies = Mapping[tuple[str, str], StudyTable]  # by (model, space)


def judge(low: float, high: float, bound: float, above: bool = True) -> str:
    """The verdict of an interval for a claim that the effect lies above (or below) `bound`."""
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    supports, contradicts = (low > bound, high < bound) if above else (high < bound, low > bound)
    return REPRODUCED if supports else REFUTED if contradicts else INCONCLUSIVE


@dataclass(frozen=True)
class Part:
    """One claim of a finding: the rule (measure, side, bound) first, then the numbers."""

    measure: str
    above: bool  # the claim puts the effect above the bound (else below)
    bound: float
    study: str
    effect: float = math.nan
    low: float = math.nan
    high: float = math.nan
    detail: str = ""  # the numbers behind the effect, or what is missing

    @property
    def rule(self) -> str:
        return f"{self.measure} {'>' if self.above else '<'} {_fmt(self.bound)}"

    @property
    def verdict(self) -> str:
        return judge(self.low, self.high, self.bound, self.above)

    def describe(self) -> str:
        if math.isnan(self.effect):
            return f"{self.rule}: {INCONCLUSIVE}, {self.detail}"
        numbers = f"{_fmt(self.effect)} [{_fmt(self.low)}, {_fmt(self.high)}]"
        return f"{self.rule}: {self.verdict}, {numbers} ({self.study}: {self.detail})"


# --- helpers: tables, intervals, verdicts ---------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _label(space: str, *models: str) -> str:
    return f"{space} ({', '.join(models)})"


def _table(studies: Studies, model: str, space: str) -> tuple[pd.DataFrame, str]:
    """The trials of (model, space) that hold the space's columns, and what is missing (empty if nothing)."""
    table = studies.get((model, space))
    if table is None or table.trials.empty:
        return pd.DataFrame(), f"no {model} {space} study"
    lacking = [column for column in COLUMNS[space] if column not in table.trials]
    if lacking:
        return pd.DataFrame(), f"the {model} {space} trials lack {', '.join(lacking)}"
    return table.trials.dropna(subset=list(COLUMNS[space])).reset_index(drop=True), ""


def _by(trials: pd.DataFrame, *columns: str) -> list[str]:
    """Pairing keys: the given columns, and the replicate where the design has one."""
    return [*columns, REPLICATE] if REPLICATE in trials else list(columns)


def _paired(trials: pd.DataFrame, metric: pd.Series, by: list[str], first: pd.Series, second: pd.Series) -> np.ndarray:
    """Per pairing key, the mean metric of the `first` trials minus that of the `second`, where both exist."""
    frame = trials.assign(_metric=metric)
    a, b = (frame[mask].groupby(by)["_metric"].mean() for mask in (first, second))
    common = a.index.intersection(b.index)
    return (a[common] - b[common]).to_numpy()


def _replicated(trials: pd.DataFrame, cells: list[str]) -> tuple[pd.DataFrame, str]:
    """Trials of the cells holding MIN_REPLICATES seeds or more, and a note on the cells left out."""
    sizes = trials.groupby(cells)[cells[0]].transform("size")
    dropped = trials[sizes < MIN_REPLICATES].groupby(cells).ngroups
    note = f"; {dropped} cells with fewer than {MIN_REPLICATES} seeds left out" if dropped else ""
    return trials[sizes >= MIN_REPLICATES].reset_index(drop=True), note


def _decide(number: int, claim: str, parts: list[Part]) -> Finding:
    """All parts reproduced: reproduced; any refuted: refuted; else inconclusive. The deciding part gives the effect."""
    verdicts = [part.verdict for part in parts]
    verdict = REFUTED if REFUTED in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else REPRODUCED
    deciding = parts[verdicts.index(verdict)] if verdict != REPRODUCED else parts[0]
    lines = [part.describe() for part in parts]
    evidence = lines[0] if len(parts) == 1 else "; ".join(f"({chr(97 + i)}) {line}" for i, line in enumerate(lines))
    studies = ", ".join(dict.fromkeys(part.study for part in parts))
    return Finding(
        number, claim, evidence, verdict, deciding.effect, deciding.low, deciding.high, studies, deciding.rule
    )


# --- parameter importance without Optuna: first-order variance shares -------------------------------------------


def _levels(trials: pd.DataFrame) -> tuple[np.ndarray, list[int]]:
    """Each trial's level of each of PARAMS (rows x 5 codes; lr in LR_BINS log bins) and the levels' counts."""
    codes, counts = [], []
    for name in PARAMS:
        if name == "lr":
            edges = np.linspace(*LR_LOG10_RANGE, LR_BINS + 1)[1:-1]
            codes.append(np.digitize(np.log10(trials[name].to_numpy(float)), edges))
            counts.append(LR_BINS)
        else:
            code, uniques = pd.factorize(trials[name], sort=True)
            codes.append(code)
            counts.append(len(uniques))
    return np.stack(codes, axis=1), counts


def _numbers(estimate: tuple[float, float, float]) -> dict[str, float]:
    return dict(zip(("effect", "low", "high"), estimate, strict=True))


def _log_mse(trials: pd.DataFrame) -> pd.Series:
    return np.log10(trials["value"])


def _stack(studies: Studies, models: Sequence[str], space: str, minimum: int = 1) -> tuple[pd.DataFrame, str]:
    """The models' trials of `space` in one frame (column `model`), or what is missing."""
    frames, missing = [], []
    for model in models:
        trials, why = _table(studies, model, space)
        if why or len(trials) < minimum:
            missing.append(why or f"{model} {space}: {len(trials)} trials (need {minimum})")
        frames.append(trials.assign(model=model))
    return (pd.DataFrame(), "; ".join(missing)) if missing else (pd.concat(frames, ignore_index=True), "")


def _paired_part(
    part: Part,
    studies: Studies,
    models: Sequence[str],
    space: str,
    metric: Callable[[pd.DataFrame], pd.Series],
    by: Sequence[str],
    first: Callable[[pd.DataFrame], pd.Series],
    second: Callable[[pd.DataFrame], pd.Series],
) -> Part:
    """Per model, `metric` of the `first` trials minus the `second`, matched on `by` and the seed: the effect is
    the smallest of the models' mean differences, each model's pairs resampled on their own."""
    differences, missing = [], []
    for model in models:
        trials, why = _table(studies, model, space)
        pairs = (
            np.array([]) if why else _paired(trials, metric(trials), _by(trials, *by), first(trials), second(trials))
        )
        if len(pairs) < MIN_UNITS:
            missing.append(why or f"{model} {space}: {len(pairs)} matched pairs (need {MIN_UNITS})")
        differences.append(pairs)
    if missing:
        return replace(part, detail="; ".join(missing))
    values = np.concatenate(differences)
    model = np.repeat(np.arange(len(models)), [len(d) for d in differences])
    masks = [model == m for m in range(len(models))]
    estimate = intervals.bootstrap(
        lambda index: np.min([values[index[:, m]].mean(axis=1) for m in masks], axis=0), model
    )
    detail = "; ".join(
        f"{name}: positive in {int((d > 0).sum())} of {len(d)} pairs, mean {_fmt(d.mean())}"
        for name, d in zip(models, differences, strict=True)
    )
    return replace(part, **_numbers(estimate), detail=detail)


def _information_part(part: Part, trials: pd.DataFrame, selected: pd.Series, reference: pd.Series) -> Part:
    """Per model, the mean I(x; z) of the `selected` trials over that of the `reference` trials, the largest over
    the models; bootstrap of the trials within each model's two groups."""
    selected, compared = np.asarray(selected), np.asarray(selected | reference)
    rows = trials[compared].reset_index(drop=True)
    model = pd.factorize(rows["model"])[0]
    group = 2 * model + selected[compared]  # per model: 0 reference, 1 selected
    sizes = np.bincount(group, minlength=2 * (model.max(initial=0) + 1))
    if sizes.min() < MIN_REPLICATES:
        return replace(part, detail=f"{sizes.tolist()} trials in the groups compared (need {MIN_REPLICATES} each)")
    information = intervals.widened(rows["mutual_info"].to_numpy(), group)

    def largest(index: np.ndarray) -> np.ndarray:
        means = intervals.cell_means(information[index], group, len(sizes))[0]
        return (means[:, 1::2] / means[:, 0::2]).max(axis=1)

    def summary(mask: np.ndarray) -> str:
        columns = {"mutual_info": "I(x;z) {} nats", "active_units": "active units {}", "value": "best val MSE {}"}
        return ", ".join(text.format(_fmt(rows[column][mask].mean())) for column, text in columns.items())

    detail = "; ".join(
        f"{name} ({sizes[2 * m + 1]} and {sizes[2 * m]} trials): {summary(group == 2 * m + 1)} against "
        f"{summary(group == 2 * m)}"
        for m, name in enumerate(pd.unique(rows["model"]))
    )
    return replace(part, **_numbers(intervals.bootstrap(largest, group)), detail=f"means {detail}")


def _shares_part(
    part: Part, studies: Studies, models: Sequence[str], combine: Callable[[np.ndarray], np.ndarray]
) -> Part:
    """combine(first-order variance shares) on each model's `importance` search, the largest over the models;
    bootstrap of the trials, each model resampled on its own."""
    rows, missing = _stack(studies, models, IMPORTANCE, MIN_TRIALS)
    if missing:
        return replace(part, detail=missing)
    codes, levels = _levels(rows)
    y = _log_mse(rows).to_numpy()
    model = pd.factorize(rows["model"])[0]
    masks = [model == m for m in range(len(models))]

    def largest(index: np.ndarray) -> np.ndarray:
        return np.max(
            [combine(intervals.variance_shares(y[index[:, m]], codes[index[:, m]], levels)) for m in masks], axis=0
        )

    texts = []
    for name, mask in zip(models, masks, strict=True):
        shares = intervals.variance_shares(y[None, mask], codes[None, mask], levels)[0]
        text = f"{name} ({mask.sum()} trials) " + ", ".join(
            f"{p} {_fmt(s)}" for p, s in zip(PARAMS, shares, strict=True)
        )
        fanova = studies[(name, IMPORTANCE)].importances
        if fanova:
            text += " (fANOVA " + ", ".join(f"{p} {_fmt(fanova[p])}" for p in PARAMS if p in fanova) + ")"
        texts.append(text)
    return replace(
        part, **_numbers(intervals.bootstrap(largest, model)), detail="first-order shares: " + "; ".join(texts)
    )


# --- the nine findings -----------------------------------------------------------------------------------------


def lr_and_batch_size(studies: Studies) -> Finding:
    """1. Learning rate and batch size matter little.

    Rule: on each model's `importance` random search, lr and batch_size explain
    less than MINOR_SHARE of what the five parameters explain one by one:
    (S_lr + S_batch) / sum of S, S the first-order shares of the variance of log10
    best val MSE. Effect: the larger of the two models' ratios (both must hold).
    """
    part = Part("lr+batch_size share of explained variance", False, MINOR_SHARE, _label(IMPORTANCE, *MODELS))
    part = _shares_part(part, studies, MODELS, lambda s: (s[:, 0] + s[:, 1]) / s.sum(axis=1))
    return _decide(1, "Learning rate and batch size matter little.", [part])


def decoder_and_latent(studies: Studies) -> Finding:
    """2. Decoder width and latent size matter most; both must grow together.

    Rule (a): on the VAE `importance` search, the smaller of the decoder's and the
    latent size's first-order shares exceeds the largest of the other three (> 0).
    (b): on the VAE `capacity` grid, the interaction in mean log10 best val MSE:
    what a large decoder (>= LARGE) gains over a small one (<= SMALL) with a large
    latent, minus what it gains with a small latent, is above MIN_DECADES; one
    contrast per (encoder, seed) sub-grid, bootstrap of the sub-grids.
    """
    most = Part("min(S_decoder, S_latent) - max(S_lr, S_batch, S_encoder)", True, 0.0, _label(IMPORTANCE, "vae"))
    most = _shares_part(most, studies, ("vae",), lambda s: np.minimum(s[:, 3], s[:, 4]) - s[:, :3].max(axis=1))
    together = Part(
        "decoder's gain with a large - a small latent (decades)", True, MIN_DECADES, _label(CAPACITY, "vae")
    )
    claim = "Decoder width and latent size matter most; both must grow together."
    trials, missing = _table(studies, "vae", CAPACITY)
    if missing:
        return _decide(2, claim, [most, replace(together, detail=missing)])
    decoder, latent = (np.select([trials[c] <= SMALL, trials[c] >= LARGE], [0, 1], -1) for c in CAPACITY_AXES)
    quadrants = trials.assign(quadrant=latent + 2 * decoder, log_mse=_log_mse(trials))[(decoder >= 0) & (latent >= 0)]
    # one contrast per (encoder, seed) sub-grid; quadrant 0 both small, 1 latent large, 2 decoder large, 3 both large
    means = quadrants.pivot_table("log_mse", _by(trials, "encoder_hidden"), "quadrant").reindex(columns=range(4))
    means = means.dropna().to_numpy()
    if len(means) < MIN_UNITS:
        detail = f"{len(means)} (encoder, seed) sub-grids with all four quadrants (need {MIN_UNITS})"
        return _decide(2, claim, [most, replace(together, detail=detail)])
    contrasts = (means[:, 1] - means[:, 3]) - (means[:, 0] - means[:, 2])
    detail = f"{len(means)} (encoder, seed) sub-grids; mean log10 best val MSE " + ", ".join(
        f"{name} {_fmt(mean)}"
        for name, mean in zip(("both small", "latent large", "decoder large", "both large"), means.mean(0), strict=True)
    )
    estimate = intervals.bootstrap(lambda index: contrasts[index].mean(axis=1), np.zeros(len(contrasts)))
    return _decide(2, claim, [most, replace(together, **_numbers(estimate), detail=detail)])


def wide_encoder(studies: Studies) -> Finding:
    """3. An encoder wider than 8 makes the VAE worse.

    Rule: on the VAE `capacity` grid, matched by (decoder, latent[, seed]), the
    mean log10 best val MSE of encoders wider than WIDE_ENCODER minus that of the
    narrower ones is above MIN_DECADES; bootstrap of the matched differences.
    """
    part = Part("log10 MSE, encoder > 8 - encoder <= 8", True, MIN_DECADES, _label(CAPACITY, "vae"))
    part = _paired_part(
        part,
        studies,
        ("vae",),
        CAPACITY,
        _log_mse,
        ("decoder_hidden", "latent_dim"),
        lambda t: t["encoder_hidden"] > WIDE_ENCODER,
        lambda t: t["encoder_hidden"] <= WIDE_ENCODER,
    )
    return _decide(3, "An encoder wider than 8 makes the VAE worse.", [part])


def tiny_networks(studies: Studies) -> Finding:
    """4. A tiny encoder and decoder give posterior collapse (smooth latent, poor reconstruction).

    Rule: on the VAE `capacity` grid, the trials with encoder and decoder at most
    TINY wide keep less than COLLAPSED of the I(x; z) the other trials keep (mean
    over mean); bootstrap of the trials within the two groups.
    """
    claim = "A tiny encoder and decoder give posterior collapse (smooth latent, poor reconstruction)."
    part = Part("I(x;z) kept by tiny networks, of the others'", False, COLLAPSED, _label(CAPACITY, "vae"))
    trials, missing = _table(studies, "vae", CAPACITY)
    if missing:
        return _decide(4, claim, [replace(part, detail=missing)])
    tiny = (trials["encoder_hidden"] <= TINY) & (trials["decoder_hidden"] <= TINY)
    return _decide(4, claim, [_information_part(part, trials.assign(model="vae"), tiny, ~tiny)])


def cvae_robust(studies: Studies) -> Finding:
    """5. The CVAE reconstructs well across a wide range of hyperparameters.

    Rule: on the `importance` random searches, the share of trials whose best val
    MSE is within WELL x the model's TUNED_QUANTILE quantile (what tuning reaches)
    is larger for the CVAE than for the VAE by more than WIDER; bootstrap of the
    trials, each model resampled on its own.
    """
    claim = "The CVAE reconstructs well across a wide range of hyperparameters."
    part = Part("share within 2x of tuned MSE, CVAE - VAE", True, WIDER, _label(IMPORTANCE, *MODELS))
    rows, missing = _stack(studies, MODELS, IMPORTANCE, MIN_TRIALS)
    if missing:
        return _decide(5, claim, [replace(part, detail=missing)])
    values = rows["value"].to_numpy()
    vae, cvae = ((rows["model"] == model).to_numpy() for model in MODELS)

    def share(index: np.ndarray) -> np.ndarray:
        resampled = values[index]
        return (resampled <= WELL * np.quantile(resampled, TUNED_QUANTILE, axis=1, keepdims=True)).mean(axis=1)

    detail = ", ".join(
        f"{name} {_fmt(share(np.flatnonzero(mask)[None, :])[0])} of {mask.sum()} trials"
        f" (median best val MSE {_fmt(np.median(values[mask]))})"
        for name, mask in zip(MODELS, (vae, cvae), strict=True)
    )
    estimate = intervals.bootstrap(lambda index: share(index[:, cvae]) - share(index[:, vae]), cvae.astype(int))
    return _decide(5, claim, [replace(part, **_numbers(estimate), detail=detail)])


def data_size_and_noise(studies: Studies) -> Finding:
    """6. More data: less over-fitting; the CVAE's error depends on noise, hardly on size.

    Rule (a): on each model's `data-seeds` grid, matched by (noise, seed), the
    over-fitting gap log10(test MSE / train MSE) at the smallest size minus at the
    largest is above 0 (the study says "slightly reduced": only the direction is
    claimed); the smaller of the two models' means, bootstrap of the pairs.
    (b): on the CVAE's grid, the range of mean log10 best val MSE across sizes
    over its range across noise levels is below SIZE_OVER_NOISE; bootstrap of the
    seeds within each size x noise cell.
    """
    overfit = Part("over-fitting gap, smallest - largest size (decades)", True, 0.0, _label(DATA, *MODELS))
    overfit = _paired_part(
        overfit,
        studies,
        MODELS,
        DATA,
        lambda t: np.log10(t["test_mse"] / t["train_mse"]),
        ("noise",),
        lambda t: t["n_samples"] == t["n_samples"].min(),
        lambda t: t["n_samples"] == t["n_samples"].max(),
    )
    noise_first = Part("CVAE MSE range across sizes / across noise", False, SIZE_OVER_NOISE, _label(DATA, "cvae"))
    claim = "More data: less over-fitting; the CVAE's error depends on noise, hardly on size."
    return _decide(6, claim, [overfit, _size_against_noise(studies, noise_first)])


def _size_against_noise(studies: Studies, part: Part) -> Part:
    trials, missing = _table(studies, "cvae", DATA)
    trials, note = (trials, "") if missing else _replicated(trials, ["n_samples", "noise"])
    size, sizes = pd.factorize(trials.get("n_samples", pd.Series()), sort=True)
    noise, noises = pd.factorize(trials.get("noise", pd.Series()), sort=True)
    if missing or len(sizes) < 2 or len(noises) < 2:
        return replace(part, detail=missing or f"{len(sizes)} sizes, {len(noises)} noise levels replicated{note}")
    cell, shape = size * len(noises) + noise, (len(sizes), len(noises))
    y = intervals.widened(_log_mse(trials).to_numpy(), cell)

    def ranges(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        means = intervals.cell_means(y[index], cell, len(sizes) * len(noises))[0].reshape(-1, *shape)
        return np.ptp(np.nanmean(means, axis=2), axis=1), np.ptp(np.nanmean(means, axis=1), axis=1)

    by_size, by_noise = ranges(np.arange(len(y))[None, :])
    detail = f"mean log10 best val MSE spans {_fmt(by_noise[0])} across noise, {_fmt(by_size[0])} across size{note}"
    return replace(part, **_numbers(intervals.bootstrap(lambda index: np.divide(*ranges(index)), cell)), detail=detail)


def zero_noise(studies: Studies) -> Finding:
    """7. Noise 0 is modelled worse than small noise.

    Rule: on each model's `data-seeds` grid, matched by (size, seed), log10 best
    val MSE at noise 0 minus at noise SMALL_NOISE is above MIN_DECADES; the
    smaller of the two models' means, bootstrap of the pairs.
    """
    part = Part(f"log10 MSE, noise 0 - noise {SMALL_NOISE}", True, MIN_DECADES, _label(DATA, *MODELS))
    part = _paired_part(
        part,
        studies,
        MODELS,
        DATA,
        _log_mse,
        ("n_samples",),
        lambda t: np.isclose(t["noise"], 0.0),
        lambda t: np.isclose(t["noise"], SMALL_NOISE),
    )
    return _decide(7, "Noise 0 is modelled worse than small noise.", [part])


def eps_w_and_beta(studies: Studies) -> Finding:
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
    study = _label(PROBABILISTIC, *MODELS)
    parts = [
        Part("I(x;z) kept at eps_w 1, of eps_w 0.1 (beta 1)", False, COLLAPSED, study),
        Part("smallest slope of log10 MSE on log10 eps_w, beta", True, MIN_DECADES, study),
        Part("smallest slope of -I(x;z) on log10 eps_w, beta (nats)", True, 0.0, study),
    ]
    trials, missing = _stack(studies, MODELS, PROBABILISTIC)
    if not missing:
        trials, note = _replicated(trials, ["model", "eps_w", "beta"])
        levels = trials.groupby("model")[["eps_w", "beta"]].nunique().reindex(list(MODELS)).fillna(0)
        missing = f"fewer than two replicated eps_w or beta levels per model{note}" if levels.min().min() < 2 else ""
    if missing:
        return _decide(8, claim, [replace(part, detail=missing) for part in parts])
    textbook = np.isclose(trials["eps_w"], 1.0) & np.isclose(trials["beta"], 1.0)
    study_default = np.isclose(trials["eps_w"], 0.1) & np.isclose(trials["beta"], 1.0)
    parts[0] = _information_part(parts[0], trials, textbook, study_default)
    parts[1] = _slopes(parts[1], trials, _log_mse(trials).to_numpy(), note)
    parts[2] = _slopes(parts[2], trials, -trials["mutual_info"].to_numpy(), note)
    return _decide(8, claim, parts)


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
    detail = "; ".join(f"{m}: on eps_w {_fmt(s[0])}, on beta {_fmt(s[1])}" for m, s in zip(MODELS, slopes, strict=True))
    return replace(part, **_numbers(intervals.bootstrap(smallest, cell)), detail=f"slopes {detail}{note}")


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
        return _decide(9, claim, [replace(separates, detail=why), replace(overlaps, detail=why)])
    with warnings.catch_warnings():  # folds that all agree: a zero-width interval, and a warning about it
        warnings.simplefilter("ignore", RuntimeWarning)
        one = stats.ttest_1samp(vae, SEPARATED).confidence_interval(CONFIDENCE)
        two = stats.ttest_ind(vae, cvae, equal_var=False).confidence_interval(CONFIDENCE)
    detail = f"{len(vae)} and {len(cvae)} folds, VAE {_fmt(vae.mean())}, CVAE {_fmt(cvae.mean())} (0.5: overlapping)"
    separates = replace(separates, effect=vae.mean(), low=one.low, high=one.high, detail=detail)
    overlaps = replace(overlaps, effect=vae.mean() - cvae.mean(), low=two.low, high=two.high, detail=detail)
    return _decide(9, claim, [separates, overlaps])


CHECKS: tuple[Callable[[Studies], Finding], ...] = (
    lr_and_batch_size,
    decoder_and_latent,
    wide_encoder,
    tiny_networks,
    cvae_robust,
    data_size_and_noise,
    zero_noise,
    eps_w_and_beta,
)


def all_findings(studies: Studies, latent_accuracy: Mapping[str, float | Sequence[float]]) -> list[Finding]:
    """The nine findings: studies by (model, space); the champions' per-fold latent moon accuracies by model."""
    return [check(studies) for check in CHECKS] + [latent_separation(latent_accuracy)]


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    def number(value: float) -> str:
        return "-" if math.isnan(value) else _fmt(value)

    return pd.DataFrame(
        {
            "#": [f.number for f in findings],
            "finding": [f.claim for f in findings],
            "effect": [f"{number(f.effect)} ({f.rule})" for f in findings],
            "interval": ["-" if math.isnan(f.low) else f"[{_fmt(f.low)}, {_fmt(f.high)}]" for f in findings],
            "verdict": [f.verdict for f in findings],
            "study": [f.study for f in findings],
            "evidence": [f.evidence for f in findings],
        }
    )
