"""The study's searches: what each space varies, with which sampler, and how trials may be pruned.

A space is plain data (Optuna distributions and, for grids, the points); the
sampler and pruner are built here from a seed so a study can be recreated exactly.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from moonvae.config import PRIORS, SpaceName

PRUNERS = ("auto", "median", "hyperband", "none")  # auto: the space's own default
RECONSTRUCTION = ("best_val_mse",)  # what a study minimises: a trial's metrics, in order
GENERATION = ("best_val_mse", "mmd_summary")  # reconstruction and the default source's sample quality (validation)
# the same with a calibrated decoder: its held-out negative ELBO, which a near-autoencoder does not win as it wins MSE
CALIBRATED_GENERATION = ("val_nelbo", "mmd_summary")
PRUNE_AFTER_EPOCHS = 50  # no pruning before this epoch: early curves rank trials poorly
MEDIAN_STARTUP_TRIALS = 5  # finished trials the median pruner needs before it prunes
TPE_STARTUP_TRIALS = 10  # random trials before TPE models the space, as in the study
WORKER_SEED_STEP = 1_000_000  # between the TPE seeds of a call's workers: far from the next call's seed + n_existing

WIDTHS = (2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Space:
    """A search: what it varies and with which sampler."""

    name: str
    sampler: str  # tpe, grid or random
    distributions: dict[str, BaseDistribution]
    grid: dict[str, tuple[Any, ...]] | None = None  # grid spaces: every combination once
    # The basic space looks for the best model, so hopeless trials may stop early; the others measure a
    # factor's effect across its whole range, and pruning would censor the very region under study.
    pruner: str = "none"
    models: tuple[str, ...] = ("vae", "cvae")  # the model kinds the space is run for
    defaults: dict[str, Any] = field(default_factory=dict)  # training values fixed unless the user fixes others
    tied: dict[str, str] = field(default_factory=dict)  # a training value that follows a searched one (data_seed: seed)
    objectives: tuple[str, ...] = RECONSTRUCTION  # trial metrics the study minimises; several: a Pareto front
    calibrated_objectives: tuple[str, ...] | None = None  # with the Gaussian likelihood, if not `objectives`

    @property
    def multi_objective(self) -> bool:
        """Optuna prunes single-objective studies only (Trial.report refuses several objectives)."""
        return len(self.objectives) > 1

    def objectives_for(self, likelihood: str) -> tuple[str, ...]:
        """What a study of the space minimises when its trials train with `likelihood`."""
        if likelihood == "gaussian" and self.calibrated_objectives is not None:
            return self.calibrated_objectives
        return self.objectives

    def config_values(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's searched values, with the tied values that follow them."""
        return params | {target: params[source] for target, source in self.tied.items() if source in params}

    @property
    def size(self) -> int | None:
        return math.prod(len(values) for values in self.grid.values()) if self.grid else None

    def points(self) -> list[tuple[Any, ...]]:
        assert self.grid is not None
        return list(itertools.product(*self.grid.values()))

    def point(self, params: dict[str, Any]) -> tuple[Any, ...]:
        assert self.grid is not None
        return tuple(params.get(name) for name in self.grid)


def grid_space(name: str, grid: dict[str, tuple[Any, ...]], **options: Any) -> Space:
    distributions: dict[str, BaseDistribution] = {key: CategoricalDistribution(values) for key, values in grid.items()}
    return Space(name, "grid", distributions, grid, **options)


BASIC = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "batch_size": CategoricalDistribution((32, 64, 128, 256)),
    "encoder_hidden": CategoricalDistribution(WIDTHS),
    "latent_dim": CategoricalDistribution(WIDTHS),
    "decoder_hidden": CategoricalDistribution(WIDTHS),
}
GENERATIVE = BASIC | {
    "eps_w": FloatDistribution(1e-3, 1.0, log=True),
    "beta": FloatDistribution(0.01, 10.0, log=True),
    "prior": CategoricalDistribution(PRIORS),
}
DATA_SIZES = (200, 2000, 20000)  # the study's data grid
DATA_NOISES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
FINDINGS_EPOCHS = {"max_epochs": 300}  # the findings' studies: long enough to converge, short enough for 45 minutes
FINDINGS_WIDTHS = (2, 4, 8, 32, 128)  # small (<= 8), large (>= 32) and tiny (<= 4) widths for findings 2-4

# The study's three searches, the studies designed for its findings (docs/tuning.md), then generation's.
SPACES = {
    SpaceName.BASIC: Space(SpaceName.BASIC, "tpe", BASIC, pruner="median"),
    SpaceName.DATA: grid_space(
        SpaceName.DATA, {"n_samples": (200, 2000, 20000), "noise": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)}
    ),
    SpaceName.PROBABILISTIC: Space(
        SpaceName.PROBABILISTIC,
        "random",
        {"eps_w": FloatDistribution(1e-3, 1.0, log=True), "beta": FloatDistribution(0.1, 100.0, log=True)},
    ),
    # random and unpruned: every region sampled alike, so parameter importances are unbiased (findings 1, 2, 5)
    SpaceName.IMPORTANCE: Space(SpaceName.IMPORTANCE, "random", BASIC, defaults=FINDINGS_EPOCHS),
    SpaceName.CAPACITY: grid_space(  # findings 2-4: encoder x decoder x latent width, two training seeds
        SpaceName.CAPACITY,
        {
            "encoder_hidden": FINDINGS_WIDTHS,
            "decoder_hidden": FINDINGS_WIDTHS,
            "latent_dim": FINDINGS_WIDTHS,
            "seed": (1, 2),
        },
        models=("vae",),
        defaults=FINDINGS_EPOCHS,
    ),
    SpaceName.DATA_SEEDS: grid_space(  # findings 6, 7: the data grid, three seeds (of the weights and of the data draw)
        SpaceName.DATA_SEEDS,
        {"n_samples": DATA_SIZES, "noise": DATA_NOISES, "seed": (1, 2, 3)},
        defaults=FINDINGS_EPOCHS,
        tied={"data_seed": "seed"},
    ),
    SpaceName.PROBABILISTIC_SEEDS: grid_space(  # finding 8: eps_w x beta, three seeds
        SpaceName.PROBABILISTIC_SEEDS,
        {"eps_w": (0.001, 0.01, 0.1, 0.3, 1.0), "beta": (0.1, 1.0, 10.0, 100.0), "seed": (1, 2, 3)},
        defaults=FINDINGS_EPOCHS,
    ),
    # multi-objective TPE, unpruned: the fit (held-out -ELBO of a calibrated decoder) against sample quality, the
    # Pareto front's best sampler registered; likelihood=mse (fixed by the user) searches val MSE instead, as before
    SpaceName.GENERATIVE: Space(
        SpaceName.GENERATIVE,
        "tpe",
        GENERATIVE,
        objectives=GENERATION,
        calibrated_objectives=CALIBRATED_GENERATION,
        defaults={"likelihood": "gaussian"},
    ),
}
assert tuple(SPACES) == tuple(SpaceName), "every space named in config.SpaceName, in its order"


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its `study.stop()` once the grid is covered.

    That call is only allowed inside `Study.optimize` and raises under ask/tell; here
    the workers' count decides when a study is done.
    """

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        return None


class TrialSeededRandomSampler(optuna.samplers.RandomSampler):
    """Random draws seeded by the seed and the trial number alone, not by the order workers ask in.

    So a random study holds the same points whatever the number of workers and their timing,
    and a resumed study draws new points (its trials have new numbers).
    """

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._base_seed = seed

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        key = np.random.SeedSequence([self._base_seed, trial.number, zlib.crc32(param_name.encode())])
        draw = optuna.samplers.RandomSampler(seed=int(key.generate_state(1)[0]))
        return draw.sample_independent(study, trial, param_name, param_distribution)


def make_sampler(space: Space, seed: int, n_existing: int, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler for one worker (numbered from 0) of a study that held `n_existing` trials.

    The grid gives trial k the k-th point of an order fixed by the seed, and the random sampler
    draws from the seed and the trial number, so several workers reproduce one worker's study.
    TPE learns from whichever trials have finished when it is asked, so only one worker reproduces
    it; each worker gets its own seed (two with one seed would propose the same first points),
    past the trials the study held, so a resumed study does not replay the draws of its first call.
    """
    if space.sampler == "grid":
        assert space.grid is not None
        return GridSampler({key: list(values) for key, values in space.grid.items()}, seed=seed)
    if space.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed + n_existing + WORKER_SEED_STEP * worker,
            n_startup_trials=TPE_STARTUP_TRIALS,
            constant_liar=True,
        )
    return TrialSeededRandomSampler(seed)


def askable(pruner: optuna.pruners.BasePruner, complete: list[FrozenTrial]) -> Callable[[int], bool]:
    """The steps at which asking `pruner` can change its answer from no, given the study's complete trials.

    make_pruner's median pruner says no with fewer than MEDIAN_STARTUP_TRIALS complete trials,
    before PRUNE_AFTER_EPOCHS, and at a step no complete trial reported (it compares with their
    median there); the NopPruner always says no; hyperband never prunes before PRUNE_AFTER_EPOCHS.
    Each ask reads the study from its storage (4-6 ms of CPU on sqlite).
    """
    if isinstance(pruner, optuna.pruners.NopPruner):
        return lambda step: False
    if isinstance(pruner, optuna.pruners.MedianPruner):
        if len(complete) < MEDIAN_STARTUP_TRIALS:
            return lambda step: False
        reported = frozenset(step for trial in complete for step in trial.intermediate_values)
        return lambda step: step >= PRUNE_AFTER_EPOCHS and step in reported
    return lambda step: step >= PRUNE_AFTER_EPOCHS


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=PRUNE_AFTER_EPOCHS)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min(PRUNE_AFTER_EPOCHS, max_epochs), max_resource=max_epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()
