"""Optuna studies over the training config: one nested MLflow run per trial, the best one registered.

A study lives in Optuna's RDB storage and is mirrored by one MLflow run (the study
run) whose direct children are its trials. Workers (threads here, or other
processes on the same storage) ask for a trial only after counting, under a lock,
the trials the study already holds, finished or running: so they stop together at
`n_trials`, and a second call on a study runs only the missing trials. Failed
trials do not count, so a crash never shortens a study; heartbeats let a killed
worker's trial be noticed, failed, and replaced.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize uses; ask/tell has no public one
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from tqdm import tqdm

from moonvae import tracking
from moonvae.config import MODELS, ConfigError, RunConfig
from moonvae.experiment import run_training
from moonvae.train import EpochMetrics, one_torch_thread

PRUNERS = ("auto", "median", "hyperband", "none")  # auto: the space's own default
REPORT_EVERY = 10  # epochs between reports to the pruner: each report is a storage write (~4 ms on sqlite)
PRUNE_AFTER_EPOCHS = 50  # no pruning before this epoch: early curves rank trials poorly
MEDIAN_STARTUP_TRIALS = 5  # finished trials the median pruner needs before it prunes
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120  # a running trial without a heartbeat for this long belongs to a dead worker
WAIT_SECONDS = 5.0  # poll interval while other processes finish the study's last trials
GRID_ATTEMPTS = 2  # a grid point that fails is tried once more, then left out
MAX_FAILURES_IN_ROW = 5  # then something is broken beyond one trial: stop the call

RUN_ID_ATTR = "mlflow_run_id"  # trial and study user attrs linking Optuna to MLflow
MODEL_ID_ATTR = "mlflow_model_id"
MODEL_ATTR, SPACE_ATTR, CONFIG_ATTR = "moonvae.model", "moonvae.space", "moonvae.config"
STATE_TAG = "optuna.state"

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

    @property
    def size(self) -> int | None:
        return math.prod(len(values) for values in self.grid.values()) if self.grid else None

    def points(self) -> list[tuple[Any, ...]]:
        assert self.grid is not None
        return list(itertools.product(*self.grid.values()))

    def point(self, params: dict[str, Any]) -> tuple[Any, ...]:
        assert self.grid is not None
        return tuple(params.get(name) for name in self.grid)


def _grid_space(name: str, grid: dict[str, tuple[Any, ...]]) -> Space:
    distributions: dict[str, BaseDistribution] = {key: CategoricalDistribution(values) for key, values in grid.items()}
    return Space(name, "grid", distributions, grid)


# The study's three searches (README: Tune).
SPACES = {
    "basic": Space(
        "basic",
        "tpe",
        {
            "lr": FloatDistribution(1e-4, 1e-1, log=True),
            "batch_size": CategoricalDistribution((32, 64, 128, 256)),
            "encoder_hidden": CategoricalDistribution(WIDTHS),
            "latent_dim": CategoricalDistribution(WIDTHS),
            "decoder_hidden": CategoricalDistribution(WIDTHS),
        },
        pruner="median",
    ),
    "data": _grid_space("data", {"n_samples": (200, 2000, 20000), "noise": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)}),
    "probabilistic": Space(
        "probabilistic",
        "random",
        {"eps_w": FloatDistribution(1e-3, 1.0, log=True), "beta": FloatDistribution(0.1, 100.0, log=True)},
    ),
}


def study_name(model: str, space: str, base: str | None = None, *, both: bool = False) -> str:
    """`moonvae-{model}-{space}` by default; a given base as is, or `{base}-{model}` when tuning both models."""
    if not base:
        return f"moonvae-{model}-{space}"
    return f"{base}-{model}" if both else base


def default_storage(tracking_uri: str | None = None) -> str:
    """An sqlite file beside the sqlite tracking database, else `optuna.db` in the working directory."""
    uri = tracking_uri or tracking.tracking_uri()
    folder = Path.cwd()
    if uri.startswith("sqlite:///"):
        folder = (Path.cwd() / uri.removeprefix("sqlite:///")).parent
    return f"sqlite:///{folder / 'optuna.db'}"


def redact(url: str) -> str:
    """The storage URL without its password, fit for a param or a log line."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its `study.stop()` once the grid is covered.

    That call is only allowed inside `Study.optimize` and raises under ask/tell; here
    the workers' count decides when a study is done.
    """

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        return None


def make_sampler(space: Space, seed: int, n_existing: int) -> optuna.samplers.BaseSampler:
    """The space's sampler. Grid order depends on the seed only; the others are reseeded past the
    trials a study already holds, so a resumed study does not replay the draws of its first call."""
    if space.sampler == "grid":
        assert space.grid is not None
        return GridSampler({key: list(values) for key, values in space.grid.items()}, seed=seed)
    if space.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed + n_existing, n_startup_trials=10, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed + n_existing)


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=PRUNE_AFTER_EPOCHS)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min(PRUNE_AFTER_EPOCHS, max_epochs), max_resource=max_epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


@dataclass
class Target:
    """One study this call works on."""

    model: str
    name: str
    fixed: dict[str, Any]  # training values every trial shares, model included
    identity: dict[str, str]  # what a resumed study must match: model, space and fixed values as params


@dataclass
class Plan:
    """Everything validated, the storage open and the studies created: nothing left that bad input can break."""

    space: Space
    n_trials: int  # what each study should hold at the end (the grid caps it at its size)
    storage_url: str
    storage: RDBStorage
    n_jobs: int
    timeout: float | None
    pruner: str
    seed: int
    max_epochs: int
    targets: list[Target]
    studies: dict[str, optuna.Study] = field(default_factory=dict)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def open_storage(url: str) -> RDBStorage:
    """Optuna RDB storage with heartbeats on; a trial whose worker died is failed and its run ended."""
    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats: experimental since 2.9, still here
    try:
        return RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=_end_stale_trial_run,
        )
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot open storage {redact(url)}: {reason}") from None


def _end_stale_trial_run(study: optuna.Study, trial: FrozenTrial) -> None:
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if not run_id:
        return
    mlflow_client = tracking.client()
    if mlflow_client.get_run(run_id).info.status == "RUNNING":
        reason = f"its worker stopped (no heartbeat for {GRACE_SECONDS} s)"
        tracking.end_run(mlflow_client, run_id, RunStatus.FAILED, reason)
        mlflow_client.set_tag(run_id, STATE_TAG, TrialState.FAIL.name)


def plan(
    model: str = "both",
    space: str = "basic",
    n_trials: int | None = None,
    *,
    study_base: str | None = None,
    storage: str | None = None,
    n_jobs: int = 1,
    timeout: float | None = None,
    pruner: str = "auto",
    fixed: dict[str, Any] | None = None,
) -> Plan:
    """Validate every input, open the storage and check or create the studies.

    Raises ConfigError with a one-line message before anything is created when
    an input is bad, the storage cannot be opened, or an existing study of the
    same name was made for another model, space or fixed training values.
    """
    fixed = dict(fixed or {})
    _require(model in (*MODELS, "both"), f"model must be one of {', '.join((*MODELS, 'both'))}, got {model!r}")
    _require(space in SPACES, f"space must be one of {', '.join(SPACES)}, got {space!r}")
    search_space = SPACES[space]
    _require(n_trials is None or n_trials >= 1, f"n_trials must be an integer >= 1, got {n_trials!r}")
    _require(n_jobs >= 1, f"n_jobs must be an integer >= 1, got {n_jobs!r}")
    _require(timeout is None or timeout > 0, f"timeout must be a number of seconds > 0, got {timeout!r}")
    _require(pruner in PRUNERS, f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    searched = sorted(set(fixed) & set(search_space.distributions))
    _require(
        not searched,
        f"{', '.join(searched)} {'is' if len(searched) == 1 else 'are'} searched by the {space} space; "
        "leave it out or choose another space",
    )
    _require("model" not in fixed, "model is chosen by the model option, not as a fixed training value")
    base = RunConfig.from_flat(fixed).validate()
    models = list(MODELS) if model == "both" else [model]
    targets = []
    for one in models:
        config = RunConfig.from_flat({**fixed, "model": one})
        identity = {key: value for key, value in config.params().items() if key not in search_space.distributions}
        identity["space"] = space
        targets.append(
            Target(one, study_name(one, space, study_base, both=model == "both"), {**fixed, "model": one}, identity)
        )
    size = search_space.size
    wanted = 100 if n_trials is None else n_trials
    storage_url = storage or default_storage()
    opened = open_storage(storage_url)
    found = {target.name: _load_study(opened, target.name) for target in targets}
    for target in targets:
        if found[target.name] is not None:
            _check_identity(found[target.name], target)
    result = Plan(
        space=search_space,
        n_trials=min(wanted, size) if size else wanted,
        storage_url=storage_url,
        storage=opened,
        n_jobs=n_jobs,
        timeout=timeout,
        pruner=search_space.pruner if pruner == "auto" else pruner,
        seed=base.train.seed,
        max_epochs=base.train.max_epochs,
        targets=targets,
    )
    for target in targets:
        result.studies[target.name] = found[target.name] or _create_study(opened, target)
    return result


def _load_study(storage: RDBStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _check_identity(study: optuna.Study, target: Target) -> None:
    held = study.user_attrs.get(CONFIG_ATTR)
    if held is None:
        raise ConfigError(f"study {target.name!r} exists but was not made by moonvae tune; choose another study_name")
    different = [f"{key}={held.get(key)}" for key, value in target.identity.items() if held.get(key) != value]
    if different:
        raise ConfigError(
            f"study {target.name!r} was run with {', '.join(different)}; "
            "pass the same values to resume it, or choose another study_name"
        )


def _create_study(storage: RDBStorage, target: Target) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=target.name, direction="minimize", load_if_exists=True)
    if CONFIG_ATTR not in study.user_attrs:
        study.set_user_attr(MODEL_ATTR, target.model)
        study.set_user_attr(SPACE_ATTR, target.identity["space"])
        study.set_user_attr(CONFIG_ATTR, target.identity)
    else:  # another process created it a moment ago
        _check_identity(study, target)
    return study


@dataclass
class StudyResult:
    name: str
    model: str
    run_id: str
    counts: dict[str, int]  # trials by state name, over the whole study
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    registered: tuple[str, str, str] | None  # (model name, version, alias)
    seconds: float


class TooManyFailures(RuntimeError):
    """Several trials in a row failed: the cause is not one trial's parameters."""


@dataclass
class _Worksite:
    """The shared state of one study's workers in this call."""

    plan: Plan
    target: Target
    study: optuna.Study
    mlflow_client: MlflowClient
    run_id: str
    deadline: float | None
    bar: tqdm
    gate: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    failures_in_row: int = 0
    last_failure: str = ""


def run(plan: Plan, mlflow_client: MlflowClient, entry_run_id: str | None = None) -> list[StudyResult]:
    """Run every planned study to its `n_trials`; returns what each holds at the end.

    Under `mlflow run`, the entry point's run becomes the study run when it is the
    first call on a single study; otherwise the study runs sit beside it and it is
    tagged with their ids.
    """
    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats: experimental since 2.9, still here
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    experiment = tracking.experiment_id(mlflow_client)
    study_runs = {name: _study_run_id(mlflow_client, study, experiment) for name, study in plan.studies.items()}
    adopt = entry_run_id if entry_run_id and len(plan.targets) == 1 and None in study_runs.values() else None
    launcher = (
        tracking.run(mlflow_client, "tune", resume_run_id=entry_run_id) if entry_run_id and not adopt else nullcontext()
    )
    results = []
    with launcher, one_torch_thread():
        for target in plan.targets:
            results.append(_run_study(plan, target, mlflow_client, study_runs[target.name] or adopt))
            if entry_run_id and not adopt:
                tracking.set_tags(
                    mlflow_client, entry_run_id, {"moonvae.study_runs": ",".join(r.run_id for r in results)}
                )
    return results


def _study_run_id(mlflow_client: MlflowClient, study: optuna.Study, experiment: str) -> str | None:
    """The study's MLflow run from an earlier call, if it is in this tracking store and experiment."""
    run_id = study.user_attrs.get(RUN_ID_ATTR)
    if not run_id:
        return None
    try:
        found = mlflow_client.get_run(run_id)
    except Exception:
        return None
    return run_id if found.info.experiment_id == experiment and found.info.lifecycle_stage == "active" else None


def _run_study(plan: Plan, target: Target, mlflow_client: MlflowClient, run_id: str | None) -> StudyResult:
    study = plan.studies[target.name]
    started = time.monotonic()
    n_existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(plan.space, plan.seed, n_existing)
    study.pruner = make_pruner(plan.pruner, plan.max_epochs)
    tags = {"moonvae.kind": "study", "optuna.study": target.name, "moonvae.model": target.model}
    tags |= {"moonvae.space": plan.space.name, "moonvae.n_trials": str(plan.n_trials)}
    with tracking.run(mlflow_client, target.name, resume_run_id=run_id, tags=tags) as study_run_id:
        study.set_user_attr(RUN_ID_ATTR, study_run_id)
        params = {key: value for key, value in target.identity.items() if key != "space"}
        params |= {"study": target.name, "space": plan.space.name, "sampler": type(study.sampler).__name__}
        params |= {"pruner": plan.pruner, "n_trials": plan.n_trials, "optuna_storage": redact(plan.storage_url)}
        tracking.log_params(mlflow_client, study_run_id, params)
        done = _count(study)["done"]
        bar = tqdm(total=plan.n_trials, initial=min(done, plan.n_trials), desc=target.name, unit="trial", leave=True)
        site = _Worksite(
            plan,
            target,
            study,
            mlflow_client,
            study_run_id,
            deadline=started + plan.timeout if plan.timeout else None,
            bar=bar,
        )
        with bar:
            _work_in_parallel(site)
        if site.failures_in_row >= MAX_FAILURES_IN_ROW:
            raise TooManyFailures(f"{site.failures_in_row} trials in a row failed, the last with {site.last_failure}")
        result = _summarise(site, time.monotonic() - started)
    return result


def _work_in_parallel(site: _Worksite) -> None:
    """n_jobs workers on one study; Ctrl-C stops them all at their next epoch, ending their runs KILLED."""
    if site.plan.n_jobs == 1:
        _work(site)
        return
    with ThreadPoolExecutor(site.plan.n_jobs, thread_name_prefix="trial") as pool:
        futures = [pool.submit(_work, site) for _ in range(site.plan.n_jobs)]
        try:
            for future in wait(futures, return_when=FIRST_EXCEPTION).done:
                future.result()  # a worker's error (a lost storage, say) stops the others too
        except BaseException:
            site.stop.set()
            with site.gate:
                site.gate.notify_all()
            raise


def _count(study: optuna.Study) -> Counter[str]:
    states = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    return Counter(
        done=states[TrialState.COMPLETE] + states[TrialState.PRUNED],
        running=states[TrialState.RUNNING],
        waiting=states[TrialState.WAITING],
        failed=states[TrialState.FAIL],
    )


def _work(site: _Worksite) -> None:
    while (trial := _next_trial(site)) is not None:
        _run_trial(site, trial)


def _next_trial(site: _Worksite) -> optuna.Trial | None:
    """Ask for a trial if the study still needs one, counting running trials as done-to-be.

    When the running ones would complete the study, wait: if one of them fails,
    this worker replaces it. Runs under the gate so two workers never both take
    the last place.
    """
    with site.gate:
        while True:
            if site.stop.is_set() or site.failures_in_row >= MAX_FAILURES_IN_ROW:
                return None
            if site.deadline is not None and time.monotonic() >= site.deadline:
                return None
            optuna.storages.fail_stale_trials(site.study)
            counts = _count(site.study)
            if counts["done"] >= site.plan.n_trials:
                return None
            if counts["done"] + counts["running"] < site.plan.n_trials:
                if site.plan.space.grid is None or counts["waiting"] or _grid_point_available(site):
                    return site.study.ask(fixed_distributions=site.plan.space.distributions)
                if not counts["running"]:
                    return None  # every grid point was run or failed too often
            site.gate.wait(WAIT_SECONDS)


def _grid_point_available(site: _Worksite) -> bool:
    """True when a grid point was never tried (the sampler picks it) or failed and may be tried again.

    A failed point is queued here, so the next `ask` takes it: the grid sampler counts failed points as visited.
    """
    space = site.plan.space
    tried: dict[tuple[Any, ...], list[TrialState]] = {point: [] for point in space.points()}
    for trial in site.study.get_trials(deepcopy=False):
        params = trial.params or trial.system_attrs.get("fixed_params", {})
        tried.setdefault(space.point(params), []).append(trial.state)
    for point, states in tried.items():
        if states and all(state == TrialState.FAIL for state in states) and len(states) < GRID_ATTEMPTS:
            site.study.enqueue_trial(dict(zip(space.grid or {}, point, strict=True)))
            return True
    return any(not states for states in tried.values())


def _run_trial(site: _Worksite, trial: optuna.Trial) -> None:
    """Train one trial in its own MLflow run, nested under the study run, and tell Optuna how it ended."""
    started = time.monotonic()
    state, value, reason, run_id = TrialState.FAIL, None, "", None
    tags = {"optuna.study": site.target.name, "optuna.trial": str(trial.number), "moonvae.model": site.target.model}
    interrupted = False
    try:
        with (
            get_heartbeat_thread(trial._trial_id, site.plan.storage),
            tracking.run(
                site.mlflow_client,
                f"trial-{trial.number:03d}",
                parent_run_id=site.run_id,
                tags=tags | {"moonvae.space": site.plan.space.name},
                killed_by=(optuna.TrialPruned,),
            ) as run_id,
        ):
            trial.set_user_attr(RUN_ID_ATTR, run_id)
            config = RunConfig.from_flat({**site.target.fixed, **trial.params}).validate()
            outcome = run_training(config, site.mlflow_client, run_id, on_epoch=_reporter(site, trial))
            if outcome.model_info is not None:
                trial.set_user_attr(MODEL_ID_ATTR, outcome.model_info.model_id)
        state, value = TrialState.COMPLETE, outcome.result.best_val_mse
    except optuna.TrialPruned as pruned:
        state, reason = TrialState.PRUNED, str(pruned)
    except KeyboardInterrupt:
        interrupted, reason = True, "interrupted"
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
    if reason:
        trial.set_user_attr("reason", reason[:1000])
    site.study.tell(trial, value, state=state)
    if run_id:
        site.mlflow_client.set_tag(run_id, STATE_TAG, state.name)
    _report_progress(site, trial.number, state, value, reason, time.monotonic() - started)
    if interrupted:
        site.stop.set()
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt


def _reporter(site: _Worksite, trial: optuna.Trial) -> Callable[[EpochMetrics], None]:
    """Per epoch: stop on Ctrl-C elsewhere; every REPORT_EVERY epochs report val MSE and maybe prune."""

    def on_epoch(metrics: EpochMetrics) -> None:
        if site.stop.is_set():
            raise KeyboardInterrupt
        if (metrics.epoch + 1) % REPORT_EVERY == 0:
            trial.report(metrics.val_mse, metrics.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch} (val_mse {metrics.val_mse:.5f})")

    return on_epoch


def _report_progress(
    site: _Worksite, number: int, state: TrialState, value: float | None, reason: str, seconds: float
) -> None:
    with site.gate:
        if state == TrialState.FAIL:
            site.failures_in_row += 1
            site.last_failure = reason
        else:
            site.failures_in_row = 0
        counts = _count(site.study)
        site.bar.n = min(counts["done"], site.plan.n_trials)
        try:
            site.bar.set_postfix(best=f"{site.study.best_value:.5f}", failed=counts["failed"], refresh=False)
        except ValueError:  # no complete trial yet
            site.bar.set_postfix(failed=counts["failed"], refresh=False)
        outcome = f"val_mse {value:.5f}" if value is not None else reason
        site.bar.write(f"{site.target.name} trial-{number:03d} {state.name.lower()}: {outcome} ({seconds:.1f} s)")
        site.bar.refresh()
        site.gate.notify_all()


def _summarise(site: _Worksite, seconds: float) -> StudyResult:
    """Best params and metrics, a CSV of all trials and Optuna's plots on the study run; the best model registered."""
    study, client, run_id = site.study, site.mlflow_client, site.run_id
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial.state.name for trial in trials)
    metrics: dict[str, float] = {f"trials_{state.lower()}": counts[state] for state in ("COMPLETE", "PRUNED", "FAIL")}
    metrics["wall_seconds"] = seconds
    best = _best_trial(study)
    registered = None
    if best is not None:
        metrics |= {"best_val_mse": best.value, "best_trial": best.number}  # type: ignore[dict-item]
        tracking.set_tags(client, run_id, {f"best.{key}": value for key, value in best.params.items()})
        tracking.set_tags(client, run_id, {"moonvae.best_run_id": best.user_attrs.get(RUN_ID_ATTR, "")})
        best_run = client.get_run(best.user_attrs[RUN_ID_ATTR])
        metrics |= {f"best_{key}": value for key, value in best_run.data.metrics.items() if key.startswith("test_")}
        summary = {"trial": best.number, "value": best.value, "params": best.params, "run_id": best_run.info.run_id}
        tracking.log_text(client, run_id, json.dumps(summary, indent=2), "best.json")
        registered = _register(site, best)
    with tracking.MetricBuffer(client, run_id) as buffer:
        buffer.add(metrics, step=len(trials))
    tracking.log_text(client, run_id, study.trials_dataframe().to_csv(index=False), "trials.csv")
    for artifact, figure in _optuna_figures(study):
        tracking.log_figure(client, run_id, figure, f"plots/{artifact}.html")
    return StudyResult(
        name=site.target.name,
        model=site.target.model,
        run_id=run_id,
        counts=dict(counts),
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        best_params=best.params if best else {},
        registered=registered,
        seconds=seconds,
    )


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _optuna_figures(study: optuna.Study) -> Iterator[tuple[str, Any]]:
    """Optuna's plots that the study can draw (importances need two complete trials, for instance)."""
    from optuna import visualization
    from optuna.importance import FanovaImportanceEvaluator

    plots: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: visualization.plot_optimization_history(study),
        "param_importances": lambda: visualization.plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0)
        ),
        "parallel_coordinate": lambda: visualization.plot_parallel_coordinate(study),
        "slice": lambda: visualization.plot_slice(study),
    }
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    for name, draw in plots.items():
        if complete < (2 if name == "param_importances" else 1):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = draw()
        except (ValueError, RuntimeError):  # e.g. every trial has the same params: nothing to rank
            continue
        yield name, figure


def alias_for(space: str) -> str:
    """`champion` for the basic space; the others change the data or the loss, so their best gets its own alias."""
    return "champion" if space == "basic" else f"best-{space}"


def _register(site: _Worksite, best: FrozenTrial) -> tuple[str, str, str] | None:
    """The best trial's model as a version of moonvae-{model} with the space's alias (reused if already registered)."""
    model_id = best.user_attrs.get(MODEL_ID_ATTR)
    if not model_id:
        return None
    name, alias = f"moonvae-{site.target.model}", alias_for(site.plan.space.name)
    version = tracking.registered_version(site.mlflow_client, name, model_id)
    if version is None:
        best_run = site.mlflow_client.get_run(best.user_attrs[RUN_ID_ATTR])
        tags = {"moonvae.study": site.target.name, "moonvae.trial": best.number, "moonvae.space": site.plan.space.name}
        tags |= {key: value for key, value in best_run.data.metrics.items() if key.startswith(("best_val", "test_"))}
        version = tracking.register_model(
            site.mlflow_client,
            tracking.logged_model_info(model_id),
            name,
            alias=alias,
            tags=tags,
            description="A VAE or CVAE on the two-moons data, tuned by moonvae",
        )
        version = keep_first_version(site.mlflow_client, name, alias, model_id, version)
    else:
        tracking.set_alias(site.mlflow_client, name, alias, version)
    return name, version, alias


def keep_first_version(mlflow_client: MlflowClient, name: str, alias: str, model_id: str, version: str) -> str:
    """Undo a duplicate registration: two workers finishing a study together may both register its best model.

    Each checks after registering; the one that does not hold the first version of
    the model deletes its own and points the alias at the first.
    """
    first = tracking.registered_version(mlflow_client, name, model_id)
    if first is None or first == version:
        return version
    tracking.delete_version(mlflow_client, name, version)
    tracking.set_alias(mlflow_client, name, alias, first)
    return first


def read_studies(storage: str, names: list[str]) -> dict[str, tuple[list[FrozenTrial], dict[str, float]]]:
    """The named studies that exist in `storage`: their trials and fANOVA parameter importances.

    Read-only, for the analysis. Importances are empty where Optuna cannot compute
    them (fewer than two complete trials, or a parameter that never varied).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = set(optuna.study.get_all_study_names(storage=storage))
    studies = {}
    for name in names:
        if name not in existing:
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        importances: dict[str, float] = {}
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
            try:
                importances = dict(
                    optuna.importance.get_param_importances(
                        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
                    )
                )
            except (RuntimeError, ValueError):
                importances = {}
        studies[name] = (study.get_trials(deepcopy=False), importances)
    return studies
