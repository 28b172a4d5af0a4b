"""Bootstrap intervals for designed studies: resampling within strata, cell means, variance shares.

Pure numpy (and pandas for grouping): the statistics behind the findings' verdicts,
kept apart from the rules so each reads on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
RESAMPLES = 2000  # bootstrap resamples
BOOTSTRAP_SEED = 0  # the same tables give the same intervals


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], strata: np.ndarray) -> tuple[float, float, float]:
    """Estimate and percentile interval of `statistic` under resampling of rows within their stratum.

    `statistic` maps a (resamples x rows) matrix of row indices to one value per
    resample. Each position keeps its stratum, so cells and models keep their sizes.
    A statistic at its bound (a variance share of 0) can have all its resamples on
    one side of it: the interval is then widened to hold the estimate.
    """
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    index = np.empty((RESAMPLES, len(strata)), dtype=np.intp)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        index[:, members] = rng.choice(members, size=(RESAMPLES, len(members)))
    tail = 100 * (1 - CONFIDENCE) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = float(statistic(np.arange(len(strata))[None, :])[0])
        low, high = np.nanpercentile(statistic(index), [tail, 100 - tail])
    return estimate, min(float(low), estimate), max(float(high), estimate)


def cell_means(values: np.ndarray, cell: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and count of each cell in each resample: values (resamples x rows) and cell codes (rows, or resamples
    x rows) -> two (resamples x cells) arrays; the mean of an empty cell is NaN."""
    resamples = len(values)
    flat = (np.broadcast_to(cell, values.shape) + n_cells * np.arange(resamples)[:, None]).ravel()
    sums = np.bincount(flat, weights=values.ravel(), minlength=resamples * n_cells).reshape(resamples, n_cells)
    counts = np.bincount(flat, minlength=resamples * n_cells).reshape(resamples, n_cells)
    return sums / np.where(counts > 0, counts, np.nan), counts


def widened(y: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """y with each cell's deviations from its mean scaled by sqrt(n / (n - 1)), for resampling within cells.

    Resampling a cell's n values varies its mean by (n - 1) / n of what n new
    seeds would (2/3 at three seeds): intervals too narrow. Scaled so, the cell
    means vary as they should, and stay where they are.
    """
    cells = pd.Series(y).groupby(cell)
    mean, size = cells.transform("mean").to_numpy(), cells.transform("size").to_numpy()
    return mean + (y - mean) * np.sqrt(size / (size - 1))


def variance_shares(y: np.ndarray, codes: np.ndarray, levels: list[int]) -> np.ndarray:
    """Each parameter's first-order share of the variance of y, per resample: y (resamples x rows) and codes
    (resamples x rows x 5) -> (resamples x 5).

    Epsilon squared: the variance between the parameter's levels, less what k
    levels explain by chance, over the total; clipped at 0. On a random search the
    parameters are independent, so this is the main effect fANOVA estimates.
    """
    n = y.shape[1]
    grand = y.mean(axis=1, keepdims=True)
    total = ((y - grand) ** 2).sum(axis=1)
    shares = []
    for column, k in enumerate(levels):
        means, counts = cell_means(y, codes[:, :, column], k)
        present = (counts > 0).sum(axis=1)
        between = np.nansum(counts * (means - grand) ** 2, axis=1)
        within = (total - between) / np.maximum(n - present, 1)
        shares.append(np.clip((between - (present - 1) * within) / total, 0, None))
    return np.stack(shares, axis=1)
