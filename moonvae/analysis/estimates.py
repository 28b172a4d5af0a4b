"""The evidence the findings read: designed studies' trial tables, and the estimators that turn them into a claim's
effect and 95% interval.

Input: one `StudyTable` per (model, space) of the spaces the findings read, their
completed trials as a DataFrame (searched params, `value` = best validation MSE,
recorded metrics: `COLUMNS`). Intervals: percentile bootstrap (`intervals`: 2000
resamples, fixed seed) of the trials, resampled within the design's cells (spread
corrected for few seeds) or models, or of paired differences. MSEs are compared as
log10 (decades): across these designs errors span orders of magnitude and "worse"
means a ratio. Too few trials, pairs or seeds leave a part without numbers, and its
detail says what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from moonvae.analysis import intervals
from moonvae.analysis.verdicts import Part, fmt
from moonvae.config import SpaceName
from moonvae.tuning.tables import StudyTable

StudyTables = Mapping[tuple[str, str], StudyTable]  # by (model, space)

PARAMS = ("lr", "batch_size", "encoder_hidden", "latent_dim", "decoder_hidden")  # the importance search's
REPLICATE = "seed"  # the grid axis that repeats a cell; paired and cell-wise comparisons keep it apart
COLUMNS = {  # what each space's trial table must hold for its rules
    SpaceName.IMPORTANCE: (*PARAMS, "value"),
    SpaceName.CAPACITY: ("encoder_hidden", "latent_dim", "decoder_hidden", "value", "active_units", "mutual_info"),
    SpaceName.DATA_SEEDS: ("n_samples", "noise", REPLICATE, "value", "test_mse", "train_mse"),
    SpaceName.PROBABILISTIC_SEEDS: ("eps_w", "beta", REPLICATE, "value", "active_units", "mutual_info"),
}

MIN_TRIALS = 30  # per model: fewer random trials cannot rank five parameters
MIN_UNITS = 5  # pairs, or trials per group, a bootstrap needs: fewer make intervals narrower than the truth
MIN_REPLICATES = 2  # seeds per cell where trials are resampled within cells (one seed: no spread to resample)
LR_BINS = 6  # half-decade bins of the log-uniform lr over [1e-4, 1e-1], for its variance share
LR_LOG10_RANGE = (-4.0, -1.0)


# --- the trial tables -------------------------------------------------------------------------------------------


def trials_of(tables: StudyTables, model: str, space: str) -> tuple[pd.DataFrame, str]:
    """The trials of (model, space) that hold the space's columns, and what is missing (empty if nothing)."""
    table = tables.get((model, space))
    if table is None or table.trials.empty:
        return pd.DataFrame(), f"no {model} {space} study"
    lacking = [column for column in COLUMNS[space] if column not in table.trials]
    if lacking:
        return pd.DataFrame(), f"the {model} {space} trials lack {', '.join(lacking)}"
    return table.trials.dropna(subset=list(COLUMNS[space])).reset_index(drop=True), ""


def stacked(tables: StudyTables, models: Sequence[str], space: str, minimum: int = 1) -> tuple[pd.DataFrame, str]:
    """The models' trials of `space` in one frame (column `model`), or what is missing."""
    frames, missing = [], []
    for model in models:
        trials, why = trials_of(tables, model, space)
        if why or len(trials) < minimum:
            missing.append(why or f"{model} {space}: {len(trials)} trials (need {minimum})")
        frames.append(trials.assign(model=model))
    return (pd.DataFrame(), "; ".join(missing)) if missing else (pd.concat(frames, ignore_index=True), "")


def replicated(trials: pd.DataFrame, cells: list[str]) -> tuple[pd.DataFrame, str]:
    """Trials of the cells holding MIN_REPLICATES seeds or more, and a note on the cells left out."""
    sizes = trials.groupby(cells)[cells[0]].transform("size")
    dropped = trials[sizes < MIN_REPLICATES].groupby(cells).ngroups
    note = f"; {dropped} cells with fewer than {MIN_REPLICATES} seeds left out" if dropped else ""
    return trials[sizes >= MIN_REPLICATES].reset_index(drop=True), note


def pairing(trials: pd.DataFrame, *columns: str) -> list[str]:
    """Pairing keys: the given columns, and the replicate where the design has one."""
    return [*columns, REPLICATE] if REPLICATE in trials else list(columns)


def log_mse(trials: pd.DataFrame) -> pd.Series:
    return np.log10(trials["value"])


def numbers(estimate: tuple[float, float, float]) -> dict[str, float]:
    return dict(zip(("effect", "low", "high"), estimate, strict=True))


# --- estimators: a Part with its effect and interval, or with what is missing ------------------------------------


def _paired(trials: pd.DataFrame, metric: pd.Series, by: list[str], first: pd.Series, second: pd.Series) -> np.ndarray:
    """Per pairing key, the mean metric of the `first` trials minus that of the `second`, where both exist."""
    frame = trials.assign(_metric=metric)
    a, b = (frame[mask].groupby(by)["_metric"].mean() for mask in (first, second))
    common = a.index.intersection(b.index)
    return (a[common] - b[common]).to_numpy()


def paired_part(
    part: Part,
    tables: StudyTables,
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
        trials, why = trials_of(tables, model, space)
        pairs = (
            np.array([])
            if why
            else _paired(trials, metric(trials), pairing(trials, *by), first(trials), second(trials))
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
        f"{name}: positive in {int((d > 0).sum())} of {len(d)} pairs, mean {fmt(d.mean())}"
        for name, d in zip(models, differences, strict=True)
    )
    return replace(part, **numbers(estimate), detail=detail)


def information_part(part: Part, trials: pd.DataFrame, selected: pd.Series, reference: pd.Series) -> Part:
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

    def described(mask: np.ndarray) -> str:
        columns = {"mutual_info": "I(x;z) {} nats", "active_units": "active units {}", "value": "best val MSE {}"}
        return ", ".join(text.format(fmt(rows[column][mask].mean())) for column, text in columns.items())

    detail = "; ".join(
        f"{name} ({sizes[2 * m + 1]} and {sizes[2 * m]} trials): {described(group == 2 * m + 1)} against "
        f"{described(group == 2 * m)}"
        for m, name in enumerate(pd.unique(rows["model"]))
    )
    return replace(part, **numbers(intervals.bootstrap(largest, group)), detail=f"means {detail}")


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


def shares_part(
    part: Part, tables: StudyTables, models: Sequence[str], combine: Callable[[np.ndarray], np.ndarray]
) -> Part:
    """combine(first-order variance shares) on each model's `importance` search, the largest over the models;
    bootstrap of the trials, each model resampled on its own."""
    rows, missing = stacked(tables, models, SpaceName.IMPORTANCE, MIN_TRIALS)
    if missing:
        return replace(part, detail=missing)
    codes, levels = _levels(rows)
    y = log_mse(rows).to_numpy()
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
            f"{p} {fmt(s)}" for p, s in zip(PARAMS, shares, strict=True)
        )
        fanova = tables[(name, SpaceName.IMPORTANCE)].importances
        if fanova:
            text += " (fANOVA " + ", ".join(f"{p} {fmt(fanova[p])}" for p in PARAMS if p in fanova) + ")"
        texts.append(text)
    return replace(
        part, **numbers(intervals.bootstrap(largest, model)), detail="first-order shares: " + "; ".join(texts)
    )
