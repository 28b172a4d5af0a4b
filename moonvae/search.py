"""Tuning: Optuna studies over the training config, one nested MLflow run per trial, the best one registered.

A study lives in Optuna's RDB storage and is mirrored by one MLflow run (the study
run) whose direct children are its trials. Workers (threads in a worker, worker
processes or Ray tasks started by the executor, or other `tune` calls on the same
storage) ask for a trial only after counting, under a lock, the trials the study
already holds, finished or running: so they stop together at `n_trials`, and a
second call on a study runs only the missing trials. Failed trials do not count, so
a crash never shortens a study; heartbeats let a killed worker's trial be noticed,
failed, and replaced. The call that starts the workers watches the study (progress.py).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize uses; ask/tell has no public one
from optuna.trial import FrozenTrial, TrialState

from moonvae import data as moons
from moonvae import executor, spaces, studies, summary, tracking
from moonvae.config import MODELS, N_TRIALS, ConfigError, RunConfig
from moonvae.experiment import run_training
from moonvae.progress import Progress
from moonvae.spaces import SPACES, Space
from moonvae.studies import MODEL_ID_ATTR, RUN_ID_ATTR, SOURCE_ATTR, WORKER_ATTR, Target
from moonvae.tracking import Client
from moonvae.train import EpochMetrics, one_torch_thread

REPORT_EVERY = 10  # epochs between reports to the pruner: each report is a storage write (~4 ms on sqlite)
WAIT_SECONDS = 1.0  # poll interval while other processes finish the study's last trials (two queries a poll)
GRID_ATTEMPTS = 2  # a grid point that fails is tried once more, then left out
MAX_FAILURES_IN_ROW = 5  # then something is broken beyond one trial: stop the call
STUDY_RUN_WAIT_SECONDS = 60  # how long a worker waits for the creator of a new study to open its run
STORAGE_ENV = "MOONVAE_STORAGE"  # how a worker learns the storage URL: it may hold a password, so not as an argument
DATA_PARAMS = {"n_samples", "noise", "data_seed"}  # a space that varies these gives each trial its own data
STATE_TAG = "optuna.state"
TRIAL_ATTRS = ("test_mse", "test_kl", "train_mse", "active_units", "mutual_info", "mmd_ratio")  # kept with each trial


@dataclass
class Plan:
    """Everything validated, the storage open and the studies created: nothing left that bad input can break."""

    space: Space
    n_trials: int  # what each study should hold at the end (the grid caps it at its size)
    storage_url: str
    storage: RDBStorage
    n_jobs: int  # threads in each worker
    timeout: float | None
    pruner: str
    seed: int
    max_epochs: int
    targets: list[Target]
    workers: int = 1  # worker processes (or Ray tasks); one runs in this process
    runner: executor.Executor = field(default_factory=executor.Local)  # where the workers run
    studies: dict[str, optuna.Study] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)  # studies this call created: it opens their MLflow runs


@dataclass(frozen=True)
class Order:
    """What a worker needs to join a study, in any process: plain values (the storage URL comes by environment)."""

    space: str
    n_trials: int
    n_jobs: int
    pruner: str
    seed: int
    max_epochs: int
    target: Target
    study_run_id: str
    n_existing: int  # trials the study held when the call began: TPE's seeds start past them
    deadline: float | None  # time.time() after which no trial starts
    call: str  # the call that started the worker


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _end_stale_trial_run(study: optuna.Study, trial: FrozenTrial) -> None:
    """A dead worker's trial was failed by heartbeat: end its MLflow run too."""
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if not run_id:
        return
    mlflow_client = tracking.client()
    reason = f"its worker stopped (no heartbeat for {studies.GRACE_SECONDS} s)"
    if tracking.end_if_running(mlflow_client, run_id, tracking.FAILED, reason):
        tracking.set_tag(mlflow_client, run_id, STATE_TAG, TrialState.FAIL.name)


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
    workers: int = 1,
    runner: executor.Executor | None = None,
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
    # where the space searches the training seed, a given seed seeds only the sampler (as `mlflow run` always gives one)
    sampler_seed = fixed.pop("seed") if "seed" in search_space.distributions and "seed" in fixed else None
    _require(n_trials is None or n_trials >= 1, f"n_trials must be an integer >= 1, got {n_trials!r}")
    _require(n_jobs >= 1, f"n_jobs must be an integer >= 1, got {n_jobs!r}")
    _require(workers >= 1, f"workers must be an integer >= 1, got {workers!r}")
    _require(timeout is None or timeout > 0, f"timeout must be a number of seconds > 0, got {timeout!r}")
    _require(pruner in spaces.PRUNERS, f"pruner must be one of {', '.join(spaces.PRUNERS)}, got {pruner!r}")
    _require(
        pruner in ("auto", "none") or not search_space.multi_objective,
        f"the {space} space has {len(search_space.objectives)} objectives and Optuna does not prune multi-objective "
        "studies: use pruner=none (or auto)",
    )
    _require(
        model == "both" or model in search_space.models,
        f"the {space} space is run for {', '.join(search_space.models)} only, got model {model!r}",
    )
    searched = sorted(set(fixed) & (set(search_space.distributions) | set(search_space.tied)))
    _require(
        not searched,
        f"{', '.join(searched)} {'is' if len(searched) == 1 else 'are'} searched by the {space} space; "
        "leave it out or choose another space",
    )
    _require("model" not in fixed, "model is chosen by the model option, not as a fixed training value")
    fixed = search_space.defaults | fixed
    base = RunConfig.from_flat(fixed).validate()
    models = [one for one in MODELS if one in search_space.models] if model == "both" else [model]
    varied = set(search_space.distributions) | set(search_space.tied)
    targets = []
    for one in models:
        config = RunConfig.from_flat({**fixed, "model": one})
        identity = {key: value for key, value in config.params().items() if key not in varied}
        identity["space"] = space
        name = studies.study_name(one, space, study_base, both=model == "both")
        targets.append(Target(one, space, name, {**fixed, "model": one}, identity, search_space.objectives))
    size = search_space.size
    wanted = N_TRIALS if n_trials is None else n_trials
    storage_url = storage or studies.default_storage()
    opened = studies.open_storage(storage_url, on_stale_trial=_end_stale_trial_run)
    found = {target.name: studies.load(opened, target.name) for target in targets}
    for target in targets:
        if found[target.name] is not None:
            studies.check_identity(found[target.name], target)
    result = Plan(
        space=search_space,
        n_trials=min(wanted, size) if size else wanted,
        storage_url=storage_url,
        storage=opened,
        n_jobs=n_jobs,
        timeout=timeout,
        pruner=search_space.pruner if pruner == "auto" else pruner,
        seed=base.train.seed if sampler_seed is None else sampler_seed,
        max_epochs=base.train.max_epochs,
        targets=targets,
        workers=workers,
        runner=runner or executor.Local(),
    )
    for target in targets:
        if found[target.name] is not None:
            result.studies[target.name] = found[target.name]
            continue
        result.studies[target.name], created = studies.create(opened, target)
        if created:
            result.created.add(target.name)
    return result


class TooManyFailures(RuntimeError):
    """Several trials in a row failed: the cause is not one trial's parameters."""


@dataclass
class _Worksite:
    """The shared state of one study's workers in this call."""

    plan: Plan
    target: Target
    study: optuna.Study
    mlflow_client: Client
    run_id: str
    deadline: float | None  # time.monotonic() after which no trial starts
    worker: dict[str, Any]  # who runs the trials: WORKER_ATTR
    signalled: threading.Event  # the process was asked to stop
    gate: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)  # a worker thread was stopped or failed
    failures_in_row: int = 0
    last_failure: str = ""

    def stopping(self) -> bool:
        return self.stop.is_set() or self.signalled.is_set()


def quiet() -> None:
    """The progress bar and one line per trial say enough: Optuna and MLflow repeat notices for every trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats: experimental since 2.9, still here
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    tracking.quiet()


def run(plan: Plan, mlflow_client: Client, entry_run_id: str | None = None) -> list[summary.StudyResult]:
    """Run every planned study to its `n_trials`; returns what each holds at the end.

    Under `mlflow run`, the entry point's run becomes the study run when it is the
    first call on a single study. With both models it becomes the parent of the new
    study runs and carries each study's result as metrics (`vae_best_val_mse`, ...);
    a resumed study keeps its own run, listed in the entry run's `moonvae.study_runs`.
    """
    quiet()
    experiment = tracking.experiment_id(mlflow_client)
    study_runs = {
        target.name: _study_run_id(mlflow_client, plan.studies[target.name], experiment, target.name in plan.created)
        for target in plan.targets
    }
    adopt = entry_run_id if entry_run_id and len(plan.targets) == 1 and None in study_runs.values() else None
    parent = entry_run_id if entry_run_id and not adopt else None
    launcher = (
        tracking.run(mlflow_client, "tune", resume_run_id=parent, tags={"moonvae.kind": "tune"})
        if parent
        else nullcontext()
    )
    results = []
    with launcher, one_torch_thread():
        for target in plan.targets:
            results.append(_run_study(plan, target, mlflow_client, study_runs[target.name] or adopt, parent))
            if parent:
                tracking.set_tags(mlflow_client, parent, {"moonvae.study_runs": ",".join(r.run_id for r in results)})
                tracking.log_metrics(mlflow_client, parent, summary.entry_metrics(results[-1]))
    return results


def _study_run_id(mlflow_client: Client, study: optuna.Study, experiment: str, created_here: bool) -> str | None:
    """The study's MLflow run from an earlier call (or from the worker that created the study a moment ago).

    A worker that did not create a brand-new study waits for its creator to open the
    study run, so workers started together share one run instead of racing to make two.
    """
    deadline = time.monotonic() + (0 if created_here or not studies.is_new(study) else STUDY_RUN_WAIT_SECONDS)
    while True:
        run_id = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs.get(RUN_ID_ATTR)
        if run_id or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return run_id if run_id and tracking.is_active_in(mlflow_client, run_id, experiment) else None


def _run_study(
    plan: Plan, target: Target, mlflow_client: Client, run_id: str | None, parent_run_id: str | None
) -> summary.StudyResult:
    study = plan.studies[target.name]
    started = time.monotonic()
    n_existing = len(study.get_trials(deepcopy=False))
    study.sampler = spaces.make_sampler(plan.space, plan.seed, n_existing)  # its name is a param; workers make theirs
    tags = {"moonvae.kind": "study", "optuna.study": target.name, "moonvae.model": target.model}
    tags |= {"moonvae.space": plan.space.name, "moonvae.n_trials": str(plan.n_trials)}
    parent = None if run_id else parent_run_id  # a resumed study run stays where it was made
    with tracking.run(
        mlflow_client, target.name, resume_run_id=run_id, parent_run_id=parent, tags=tags
    ) as study_run_id:
        study.set_user_attr(RUN_ID_ATTR, study_run_id)
        if not (set(plan.space.distributions) | set(plan.space.tied)) & DATA_PARAMS:  # one data set for all trials
            x, y, path = moons.load_or_generate(RunConfig.from_flat(target.fixed).data)
            tracking.log_dataset(mlflow_client, study_run_id, x, y, path)
        params = {key: value for key, value in target.identity.items() if key != "space"}
        params |= {"study": target.name, "space": plan.space.name, "sampler": type(study.sampler).__name__}
        params |= {"pruner": plan.pruner, "n_trials": plan.n_trials, "optuna_storage": studies.redact(plan.storage_url)}
        tracking.log_params(mlflow_client, study_run_id, params)
        order = Order(
            space=plan.space.name,
            n_trials=plan.n_trials,
            n_jobs=plan.n_jobs,
            pruner=plan.pruner,
            seed=plan.seed,
            max_epochs=plan.max_epochs,
            target=target,
            study_run_id=study_run_id,
            n_existing=n_existing,
            deadline=time.time() + plan.timeout if plan.timeout else None,
            call=uuid.uuid4().hex[:12],
        )
        env = {STORAGE_ENV: plan.storage_url, "MLFLOW_TRACKING_URI": tracking.tracking_uri()}
        env["MLFLOW_EXPERIMENT_ID"] = tracking.experiment_id(mlflow_client)  # trials go where their study run is
        with Progress(study, mlflow_client, study_run_id, plan.n_trials, order.call, plan.space.objectives) as progress:
            plan.runner.run(work, order, plan.workers, plan.n_jobs, env, progress)
        result = summary.summarise(study, mlflow_client, study_run_id, target, time.monotonic() - started)
    return result


def work(order: Order, worker: int, signalled: threading.Event) -> None:
    """One worker's loop on a study, in whichever process runs it: trials until the study holds `n_trials`.

    When `signalled` is set (Ctrl-C, SIGTERM), the trial stops at its next epoch and no other
    starts. Raises TooManyFailures when trials keep failing, and ConfigError when this process
    does not see the study or its run (workers on other machines need shared services).
    """
    quiet()
    storage_url = os.environ[STORAGE_ENV]
    storage = studies.open_storage(storage_url, on_stale_trial=_end_stale_trial_run)
    study = studies.load(storage, order.target.name)
    _require(
        study is not None,
        f"{studies.redact(storage_url)} holds no study {order.target.name!r}: "
        "workers on other machines need a shared storage (PostgreSQL, say)",
    )
    mlflow_client = tracking.client()
    _require(
        tracking.run_exists(mlflow_client, order.study_run_id),
        f"the tracking store {tracking.tracking_uri()} holds no run {order.study_run_id}: "
        "workers on other machines need a shared tracking server",
    )
    space = SPACES[order.space]
    study.sampler = spaces.make_sampler(space, order.seed, order.n_existing, worker)
    study.pruner = spaces.make_pruner(order.pruner, order.max_epochs)
    plan = Plan(
        space=space,
        n_trials=order.n_trials,
        storage_url=storage_url,
        storage=storage,
        n_jobs=order.n_jobs,
        timeout=None,
        pruner=order.pruner,
        seed=order.seed,
        max_epochs=order.max_epochs,
        targets=[order.target],
        studies={order.target.name: study},
    )
    deadline = None if order.deadline is None else time.monotonic() + order.deadline - time.time()
    who = {"call": order.call, "host": socket.gethostname(), "pid": os.getpid()}
    site = _Worksite(plan, order.target, study, mlflow_client, order.study_run_id, deadline, who, signalled)
    with one_torch_thread():
        _work_in_parallel(site)
    if site.failures_in_row >= MAX_FAILURES_IN_ROW:
        raise TooManyFailures(f"{site.failures_in_row} trials in a row failed, the last with {site.last_failure}")


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
            if site.stopping() or site.failures_in_row >= MAX_FAILURES_IN_ROW:
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
    state, values, reason, run_id = TrialState.FAIL, None, "", None
    tags = {"moonvae.kind": "trial", "optuna.study": site.target.name, "optuna.trial": str(trial.number)}
    tags |= {"moonvae.model": site.target.model}
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
            trial.set_user_attr(WORKER_ATTR, site.worker)
            searched = site.plan.space.config_values(trial.params)
            config = RunConfig.from_flat({**site.target.fixed, **searched}).validate()
            outcome = run_training(config, site.mlflow_client, run_id, on_epoch=_reporter(site, trial))
            if outcome.model_info is not None:
                trial.set_user_attr(MODEL_ID_ATTR, outcome.model_info.model_id)
            final = outcome.final_metrics()
            for key in TRIAL_ATTRS:  # the findings read these from the study alone
                trial.set_user_attr(key, final[key])
            trial.set_user_attr(SOURCE_ATTR, outcome.judgement.default)
        state, values = TrialState.COMPLETE, [final[name] for name in site.plan.space.objectives]
    except optuna.TrialPruned as pruned:
        state, reason = TrialState.PRUNED, str(pruned)
    except KeyboardInterrupt:
        interrupted, reason = True, "interrupted"
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
    if reason:
        trial.set_user_attr("reason", reason[:1000])
    site.study.tell(trial, values, state=state)
    if run_id:
        tracking.set_tag(site.mlflow_client, run_id, STATE_TAG, state.name)
    _report_progress(site, trial.number, state, values, reason)
    if interrupted:
        site.stop.set()
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt


def _reporter(site: _Worksite, trial: optuna.Trial) -> Callable[[EpochMetrics], None]:
    """Per epoch: stop on Ctrl-C elsewhere; every REPORT_EVERY epochs report val MSE and maybe prune.

    Multi-objective studies are never pruned: Optuna's Trial.report refuses them.
    """

    def on_epoch(metrics: EpochMetrics) -> None:
        if site.stopping():
            raise KeyboardInterrupt
        if (metrics.epoch + 1) % REPORT_EVERY == 0 and not site.plan.space.multi_objective:
            trial.report(metrics.val_mse, metrics.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch} (val_mse {metrics.val_mse:.5f})")

    return on_epoch


def _report_progress(site: _Worksite, number: int, state: TrialState, values: list[float] | None, reason: str) -> None:
    """Count failures in a row, log the trial's objectives on the study run, and wake the workers waiting."""
    with site.gate:
        if state == TrialState.FAIL:
            site.failures_in_row += 1
            site.last_failure = reason
        else:
            site.failures_in_row = 0
        if values is not None:
            trial_metrics = summary.trial_metrics(site.plan.space.objectives, values)
            tracking.log_metrics(site.mlflow_client, site.run_id, trial_metrics, step=number)
        site.gate.notify_all()
