"""Optuna studies as moonvae keeps them: where they are stored, how they are named, what they are.

A study remembers what it is in its user attributes (`moonvae.model`,
`moonvae.space`, and the fixed training values as `moonvae.config`): the analysis
finds studies by those, whatever their names, and a resumed study must match them.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from moonvae.config import ConfigError, RunConfig
from moonvae.tracking import runs
from moonvae.tuning.executor import first_line
from moonvae.tuning.heartbeats import Storage
from moonvae.tuning.tables import StudyTable, trials_frame

OPEN_ATTEMPTS = 4  # tries to open a storage whose tables another worker is creating

OBJECTIVE = "best_val_mse"  # what every study minimises (generative: mmd_summary too), named for optuna-dashboard
RUN_ID_ATTR = "mlflow_run_id"  # trial and study user attrs linking Optuna to MLflow
MODEL_ID_ATTR = "mlflow_model_id"
WORKER_ATTR = "moonvae.worker"  # the worker that ran a trial: {call, host, pid}
SOURCE_ATTR = "source"  # trial user attr: the trial model's default sampling source
MODEL_ATTR, SPACE_ATTR, CONFIG_ATTR = "moonvae.model", "moonvae.space", "moonvae.config"
CREATED_ATTR = "moonvae.created"  # when the study was created (seconds since the epoch)
NEW_SECONDS = 120  # a study younger than this, without trials, may still be getting its MLflow run
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # a trial in either counts towards n_trials; FAIL does not


def count(trials: Iterable[FrozenTrial]) -> Counter[str]:
    """A study's trials by what they mean for its end: done, running, waiting (queued) and failed."""
    states = Counter(trial.state for trial in trials)
    return Counter(
        done=sum(states[state] for state in DONE_STATES),
        running=states[TrialState.RUNNING],
        waiting=states[TrialState.WAITING],
        failed=states[TrialState.FAIL],
    )


def study_name(model: str, space: str, base: str | None = None, *, both: bool = False) -> str:
    """The one naming rule: `moonvae-{model}-{space}` by default; a given base as is, or `{base}-{model}` for both."""
    if not base:
        return f"moonvae-{model}-{space}"
    return f"{base}-{model}" if both else base


def default_storage(tracking_uri: str | None = None) -> str:
    """An sqlite file beside the sqlite tracking database, else `optuna.db` in the working directory."""
    uri = tracking_uri or runs.tracking_uri()
    folder = Path.cwd()
    if uri.startswith("sqlite:///"):
        folder = (Path.cwd() / uri.removeprefix("sqlite:///")).parent
    return f"sqlite:///{folder / 'optuna.db'}"


def existing_default_storage() -> str | None:
    """The default storage if its file exists: reading must not create an empty database."""
    url = default_storage()
    return url if Path(url.removeprefix("sqlite:///")).exists() else None


def redact(url: str) -> str:
    """The storage URL without its password, fit for a param or a log line."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def has_password(url: str) -> bool:
    try:
        return bool(make_url(url).password)
    except Exception:
        return False


def open_storage(url: str, on_stale_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> RDBStorage:
    """Optuna RDB storage with heartbeats on, so a trial whose worker died is failed (and `on_stale_trial` called)."""
    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats: experimental since 2.9, still here
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return Storage(url, on_stale_trial)
        except Exception as error:
            reason = first_line(error)
            # workers opening a new database at the same instant race to create Optuna's tables: the loser retries
            if attempt + 1 < OPEN_ATTEMPTS and any(word in reason.lower() for word in ("already exists", "duplicate")):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(f"cannot open storage {redact(url)}: {reason}") from None
    raise AssertionError("unreachable")


class StorageLost(RuntimeError):
    """The study's storage stopped answering for longer than a worker waits for it (the grace period)."""


def lost(url: str, error: Exception) -> StorageLost:
    """A storage error as one line: Optuna wraps the database's own error, whose words say more."""
    cause = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ else error
    return StorageLost(f"lost the study's storage {redact(url)}: {first_line(cause)}")


@dataclass
class Target:
    """One study a call works on, and what it must be."""

    model: str
    space: str
    name: str
    fixed: dict[str, Any]  # training values every trial shares, model included
    identity: dict[str, str]  # what a resumed study must match: model, space and fixed values as params
    objectives: tuple[str, ...] = (OBJECTIVE,)  # the trial metrics the study minimises, in order


def load(storage: RDBStorage | str, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def check_identity(study: optuna.Study, target: Target) -> None:
    """Refuse to resume a study made for another model, space or fixed training values."""
    held = study.user_attrs.get(CONFIG_ATTR)
    if held is None:
        raise ConfigError(f"study {target.name!r} exists but was not made by moonvae tune; choose another study_name")
    defaults = RunConfig().params()  # a study made before a parameter existed ran with its default
    held = {key: held.get(key, defaults.get(key)) for key in target.identity}
    different = [f"{key}={held[key]}" for key, value in target.identity.items() if held[key] != value]
    if different:
        raise ConfigError(
            f"study {target.name!r} was run with {', '.join(different)}; "
            "pass the same values to resume it, or choose another study_name"
        )


def create(storage: RDBStorage, target: Target) -> tuple[optuna.Study, bool]:
    """The study, created with its identity unless another worker made it first; True when this call created it.

    Creating is the election: the database lets one worker create a name, so workers
    started at the same instant agree on who opens the study's MLflow run.
    """
    try:
        directions = ["minimize"] * len(target.objectives)
        study = optuna.create_study(storage=storage, study_name=target.name, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=target.name, storage=storage)
        if CONFIG_ATTR in study.user_attrs:
            check_identity(study, target)
        return study, False
    study.set_metric_names(list(target.objectives))
    mark(study, target.model, target.space, target.identity)
    return study, True


def mark(study: optuna.Study, model: str, space: str, identity: dict[str, str]) -> None:
    """Store what the study is, so it can be found and checked by attributes rather than by name."""
    study.set_user_attr(CREATED_ATTR, time.time())
    study.set_user_attr(MODEL_ATTR, model)
    study.set_user_attr(SPACE_ATTR, space)
    study.set_user_attr(CONFIG_ATTR, identity)


def is_new(study: optuna.Study) -> bool:
    """Created a moment ago by another worker and not started yet (its creator is opening its run)."""
    created = study.user_attrs.get(CREATED_ATTR)
    fresh = created is None or time.time() - created < NEW_SECONDS  # None: the creator has not marked it yet
    return fresh and not study.get_trials(deepcopy=False)


@dataclass(frozen=True)
class Found:
    name: str
    model: str
    space: str
    complete: int  # completed trials: what the analysis can use


def find(storage: str) -> list[Found]:
    """Every moonvae study in `storage`, by its stored model and space (studies without them are not ours)."""
    found = []
    for summary in optuna.get_all_study_summaries(storage=storage, include_best_trial=False):
        model, space = summary.user_attrs.get(MODEL_ATTR), summary.user_attrs.get(SPACE_ATTR)
        if model and space:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            found.append(Found(summary.study_name, model, space, complete))
    return found


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances; empty where Optuna cannot compute them (< 2 complete trials, nothing varied)."""
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):
        return {}


def read_tables(storage: str) -> dict[tuple[str, str], tuple[str, StudyTable]]:
    """For each (model, space), the study with the most completed trials: its name and its table.

    Read-only, for the analysis: completed trials with their params, value and user
    attributes (the MLflow run id among them), and the parameter importances.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen: dict[tuple[str, str], Found] = {}
    for found in find(storage):
        key = (found.model, found.space)
        if key not in chosen or found.complete > chosen[key].complete:
            chosen[key] = found
    tables = {}
    for key, found in chosen.items():
        study = optuna.load_study(study_name=found.name, storage=storage)
        tables[key] = (found.name, StudyTable(trials_frame(study.get_trials(deepcopy=False)), importances(study)))
    return tables
