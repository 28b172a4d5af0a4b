"""Trial tables of the findings' studies, designed so each finding's answer is known; and the same as Optuna studies.

The grids are the tuner's own (`spaces.SPACES`), so a table always fits its space and
can be stored as a study the analysis finds by its model and space.
"""

from __future__ import annotations

import itertools

import numpy as np
import optuna
import pandas as pd
from optuna.trial import create_trial

from moonvae.config import SpaceName
from moonvae.tuning import studies
from moonvae.tuning.spaces import SPACES, WIDTHS
from moonvae.tuning.tables import StudyTable

CAPACITY_GRID = SPACES[SpaceName.CAPACITY].grid
DATA_GRID = SPACES[SpaceName.DATA_SEEDS].grid
PROBABILISTIC_GRID = SPACES[SpaceName.PROBABILISTIC_SEEDS].grid
SEEDS = DATA_GRID["seed"]


def grid(values: dict[str, tuple], **replaced: tuple) -> pd.DataFrame:
    """Every combination of a grid's values (some axes replaced), one row each, in the grid's column order."""
    axes = values | replaced
    return pd.DataFrame(list(itertools.product(*axes.values())), columns=list(axes))


def importance(seed: int, n: int = 150, lr: float = 0.0, spread: float = 0.3, noise: float = 0.05) -> StudyTable:
    """Random search: log10 MSE falls by `spread` per doubling of min(decoder, latent), rises with |log10 lr + 2.5|."""
    rng = np.random.default_rng(seed)
    trials = pd.DataFrame(
        {
            "lr": 10 ** rng.uniform(-4, -1, n),
            "batch_size": rng.choice([32, 64, 128, 256], n),
            "encoder_hidden": rng.choice(WIDTHS, n),
            "latent_dim": rng.choice(WIDTHS, n),
            "decoder_hidden": rng.choice(WIDTHS, n),
        }
    )
    log_mse = -1 - spread * np.log2(np.minimum(trials["decoder_hidden"], trials["latent_dim"]))
    log_mse += lr * np.abs(np.log10(trials["lr"]) + 2.5) + rng.normal(0, noise, n)
    return StudyTable(trials.assign(value=10**log_mse), {"lr": 0.1, "decoder_hidden": 0.5})


def capacity(
    seed: int = 0, together: float = 1.0, encoder: float = 0.3, noise: float = 0.05, tiny_kept: float = 0.1
) -> StudyTable:
    """VAE grid: log10 MSE by min(decoder, latent) (`together` = 1) or their mean (0); encoders wider than 8 add
    `encoder`; the tiny networks (encoder and decoder <= 4) keep `tiny_kept` of the others' I(x;z), give or take
    `noise` x 4."""
    rng = np.random.default_rng(seed)
    trials = grid(CAPACITY_GRID)
    decoder, latent = np.log2(trials["decoder_hidden"]), np.log2(trials["latent_dim"])
    log_mse = -1 - 0.4 * (together * np.minimum(decoder, latent) + (1 - together) * (decoder + latent) / 2)
    log_mse += encoder * (trials["encoder_hidden"] > 8) + rng.normal(0, noise, len(trials))
    tiny = ((trials["encoder_hidden"] <= 4) & (trials["decoder_hidden"] <= 4)).to_numpy()
    information = np.where(tiny, 2.5 * tiny_kept, 2.5) + rng.normal(0, 4 * noise, len(trials))
    active = np.where(tiny, 0, np.minimum(trials["latent_dim"], 3))
    return StudyTable(trials.assign(value=10**log_mse, active_units=active, mutual_info=information))


def data_grid(
    seed: int,
    size_effect: float = 0.02,
    gap_shrinks: float = 0.2,
    zero_penalty: float = 1.0,
    noise: float = 0.02,
    seeds: tuple[int, ...] = SEEDS,
) -> StudyTable:
    """n_samples x noise x seed: log10 MSE by the data noise (plus `size_effect` per decade of size, `zero_penalty`
    at noise 0); the log10 test/train gap shrinks by `gap_shrinks` from the smallest size to the largest."""
    rng = np.random.default_rng(seed)
    trials = grid(DATA_GRID, seed=seeds)
    size_decades = np.log10(trials["n_samples"]) - np.log10(200)
    log_mse = 2 * np.log10(trials["noise"] + 0.05) + size_effect * size_decades
    log_mse += zero_penalty * (trials["noise"] == 0) + rng.normal(0, noise, len(trials))
    gap = gap_shrinks * (1 - size_decades / 2) + 0.01 + rng.normal(0, noise, len(trials))
    test = 10**log_mse
    return StudyTable(trials.assign(value=test, test_mse=test, train_mse=test / 10**gap))


def probabilistic(seed: int, textbook_kept: float = 0.3, noise: float = 0.05) -> StudyTable:
    """eps_w x beta x seed: log10 MSE and I(x;z) move with both; at eps_w = 1, beta = 1 the latent keeps
    `textbook_kept` of the I(x;z) at eps_w = 0.1, beta = 1, give or take `noise` x 10."""
    rng = np.random.default_rng(seed)
    trials = grid(PROBABILISTIC_GRID)
    pressure = np.log10(trials["eps_w"]) + np.log10(trials["beta"])
    log_mse = -3 + 0.4 * np.log10(trials["eps_w"]) + 0.3 * np.log10(trials["beta"]) + rng.normal(0, noise, len(trials))
    information = 6 * 10 ** (-0.5 * (pressure + 1))  # 6 nats at eps_w 0.1, beta 1
    textbook = (trials["eps_w"] == 1.0) & (trials["beta"] == 1.0)
    information = np.where(textbook, 6 * textbook_kept, information) + rng.normal(0, 10 * noise, len(trials))
    active = np.where(pressure > 1, 0, 2)
    return StudyTable(trials.assign(value=10**log_mse, active_units=active, mutual_info=information))


SPACES_BY_KEY = {
    "importance": SpaceName.IMPORTANCE,
    "capacity": SpaceName.CAPACITY,
    "data": SpaceName.DATA_SEEDS,
    "probabilistic": SpaceName.PROBABILISTIC_SEEDS,
}


def agreeing(**replaced: StudyTable) -> dict[tuple[str, str], StudyTable]:
    """Every findings study, each agreeing with its claims unless replaced: keys like vae_capacity=..."""
    tables = {
        ("vae", SpaceName.IMPORTANCE): importance(1, spread=0.3),
        ("cvae", SpaceName.IMPORTANCE): importance(2, spread=0.02),  # flat: reconstructs well everywhere
        ("vae", SpaceName.CAPACITY): capacity(),
        ("vae", SpaceName.DATA_SEEDS): data_grid(3),
        ("cvae", SpaceName.DATA_SEEDS): data_grid(4),
        ("vae", SpaceName.PROBABILISTIC_SEEDS): probabilistic(5),
        ("cvae", SpaceName.PROBABILISTIC_SEEDS): probabilistic(6),
    }
    for key, table in replaced.items():
        model, space = key.split("_", 1)
        tables[(model, SPACES_BY_KEY[space])] = table
    return tables


def write(storage: str, tables: dict[tuple[str, str], StudyTable], prefix: str = "designed") -> None:
    """Each table as a study `{prefix}-{model}-{space}` marked as the tuner marks its own: the space's params as
    params, `value` as the value, every other column as a user attribute."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for (model, space), table in tables.items():
        distributions = SPACES[space].distributions
        study = optuna.create_study(study_name=f"{prefix}-{model}-{space}", storage=storage)
        studies.mark(study, model, space, {"model": model, "space": space})
        trials = []
        for row in table.trials.to_dict("records"):
            row = {name: value.item() if isinstance(value, np.generic) else value for name, value in row.items()}
            params = {name: row.pop(name) for name in list(row) if name in distributions}
            value = row.pop("value")
            used = {name: distributions[name] for name in params}
            trials.append(create_trial(params=params, distributions=used, value=value, user_attrs=row))
        study.add_trials(trials)
