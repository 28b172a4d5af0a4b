"""Tuning: Optuna studies over the training config, one nested MLflow run per trial, the best one registered.

A study lives in Optuna's RDB storage and is mirrored by one MLflow run (the study
run) whose direct children are its trials. Here: validating a call (`plan`), opening
the study runs, and a worker's start in whichever process runs it (`work`); the
worker's trials are trials.py's. Workers are threads in a worker, worker processes
or Ray tasks started by the executor, or other `tune` calls on the same storage;
heartbeats let a killed worker's trial be noticed, failed, and replaced. The call
that starts the workers watches the study (progress.py).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage

from moonvae.config import MODELS, N_TRIALS, TRIALS_AT_ONCE, RunConfig, SpaceName, require
from moonvae.core import data as moons
from moonvae.core.train import one_torch_thread
from moonvae.tracking import lineage, names, runs
from moonvae.tracking.runs import Client
from moonvae.tuning import asking, results, spaces, studies, trials
from moonvae.tuning.cluster import Executor
from moonvae.tuning.heartbeats import Heartbeats
from moonvae.tuning.processes import Local
from moonvae.tuning.progress import Progress
from moonvae.tuning.spaces import SPACES, Space
from moonvae.tuning.studies import RUN_ID_ATTR, Target

STUDY_RUN_WAIT_SECONDS = 60  # how long a worker waits for the creator of a new study to open its run
STORAGE_ENV = "MOONVAE_STORAGE"  # how a worker learns the storage URL: it may hold a password, so not as an argument
DATA_PARAMS = {"n_samples", "noise", "data_seed"}  # a space that varies these gives each trial its own data


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
    trials_at_once: int = 1  # K: trials each thread trains together as one stack
    runner: Executor = field(default_factory=Local)  # where the workers run
    studies: dict[str, optuna.Study] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)  # studies this call created: it opens their MLflow runs


@dataclass(frozen=True)
class Order:
    """What a worker needs to join a study, in any process: plain values (the storage URL comes by environment)."""

    space: str
    n_trials: int
    n_jobs: int
    trials_at_once: int
    workers: int
    pruner: str
    seed: int
    max_epochs: int
    target: Target
    study_run_id: str
    n_existing: int  # trials the study held when the call began: TPE's seeds start past them
    deadline: float | None  # time.time() after which no trial starts
    call: str  # the call that started the worker


def plan(
    model: str = "both",
    space: str = SpaceName.BASIC,
    n_trials: int | None = None,
    *,
    study_base: str | None = None,
    storage: str | None = None,
    n_jobs: int = 1,
    timeout: float | None = None,
    pruner: str = "auto",
    fixed: dict[str, Any] | None = None,
    workers: int = 1,
    trials_at_once: int = TRIALS_AT_ONCE,
    runner: Executor | None = None,
) -> Plan:
    """Validate every input, open the storage and check or create the studies.

    Raises ConfigError with a one-line message before anything is created when
    an input is bad, the storage cannot be opened, or an existing study of the
    same name was made for another model, space or fixed training values.
    """
    fixed = dict(fixed or {})
    require(model in (*MODELS, "both"), f"model must be one of {', '.join((*MODELS, 'both'))}, got {model!r}")
    require(space in SPACES, f"space must be one of {', '.join(SPACES)}, got {space!r}")
    search_space = SPACES[space]
    # where the space searches the training seed, a given seed seeds only the sampler (as `mlflow run` always gives one)
    sampler_seed = fixed.pop("seed") if "seed" in search_space.distributions and "seed" in fixed else None
    require(n_trials is None or n_trials >= 1, f"n_trials must be an integer >= 1, got {n_trials!r}")
    require(n_jobs >= 1, f"n_jobs must be an integer >= 1, got {n_jobs!r}")
    require(workers >= 1, f"workers must be an integer >= 1, got {workers!r}")
    require(trials_at_once >= 1, f"trials_at_once must be an integer >= 1, got {trials_at_once!r}")
    require(timeout is None or timeout > 0, f"timeout must be a number of seconds > 0, got {timeout!r}")
    require(pruner in spaces.PRUNERS, f"pruner must be one of {', '.join(spaces.PRUNERS)}, got {pruner!r}")
    require(
        pruner in ("auto", "none") or not search_space.multi_objective,
        f"the {space} space has {len(search_space.objectives)} objectives and Optuna does not prune multi-objective "
        "studies: use pruner=none (or auto)",
    )
    require(
        model == "both" or model in search_space.models,
        f"the {space} space is run for {', '.join(search_space.models)} only, got model {model!r}",
    )
    searched = sorted(set(fixed) & (set(search_space.distributions) | set(search_space.tied)))
    require(
        not searched,
        f"{', '.join(searched)} {'is' if len(searched) == 1 else 'are'} searched by the {space} space; "
        "leave it out or choose another space",
    )
    require("model" not in fixed, "model is chosen by the model option, not as a fixed training value")
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
        objectives = search_space.objectives_for(config.model.likelihood)
        targets.append(Target(one, space, name, {**fixed, "model": one}, identity, objectives))
    size = search_space.size
    wanted = N_TRIALS if n_trials is None else n_trials
    storage_url = storage or studies.default_storage()
    opened = studies.open_storage(storage_url, on_stale_trial=trials.on_stale_trial)
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
        trials_at_once=trials_at_once,
        runner=runner or Local(),
    )
    for target in targets:
        if found[target.name] is not None:
            result.studies[target.name] = found[target.name]
            continue
        result.studies[target.name], created = studies.create(opened, target)
        if created:
            result.created.add(target.name)
    return result


def quiet() -> None:
    """The progress bar and one line per trial say enough: Optuna and MLflow repeat notices for every trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats: experimental since 2.9, still here
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    runs.quiet()


def run(plan: Plan, mlflow_client: Client, entry_run_id: str | None = None) -> list[results.StudyResult]:
    """Run every planned study to its `n_trials`; returns what each holds at the end.

    Under `mlflow run`, the entry point's run becomes the study run when it is the
    first call on a single study. With both models it becomes the parent of the new
    study runs and carries each study's result as metrics (`vae_best_val_mse`, ...);
    a resumed study keeps its own run, listed in the entry run's `moonvae.study_runs`.
    """
    quiet()
    experiment = runs.experiment_id(mlflow_client)
    study_runs = {
        target.name: _study_run_id(mlflow_client, plan.studies[target.name], experiment, target.name in plan.created)
        for target in plan.targets
    }
    adopt = entry_run_id if entry_run_id and len(plan.targets) == 1 and None in study_runs.values() else None
    parent = entry_run_id if entry_run_id and not adopt else None
    launcher = (
        runs.run(mlflow_client, "tune", resume_run_id=parent, tags={names.KIND_TAG: "tune"})
        if parent
        else nullcontext()
    )
    with launcher, one_torch_thread():
        if len(plan.targets) > 1 and isinstance(plan.runner, Local):
            finished = _side_by_side(plan, mlflow_client, study_runs, adopt, parent)
        else:
            finished = [
                _run_study(plan, target, mlflow_client, study_runs[target.name] or adopt, parent, plan.runner)
                for target in plan.targets
            ]
        if parent:
            runs.set_tags(mlflow_client, parent, {names.STUDY_RUNS_TAG: ",".join(r.run_id for r in finished)})
            for result in finished:
                runs.log_metrics(mlflow_client, parent, results.entry_metrics(result))
    return finished


def _side_by_side(
    plan: Plan, mlflow_client: Client, study_runs: dict[str, str | None], adopt: str | None, parent: str | None
) -> list[results.StudyResult]:
    """Every study at once, each worker in a process of its own: the models' studies share the cores.

    Each study is the one it would be alone (its own storage rows, seeds and trials);
    a study that fails does not stop the others, and its error is raised once all have ended.
    """
    runner = Local(own_processes=True)
    with ThreadPoolExecutor(len(plan.targets), thread_name_prefix="study") as pool:
        futures = [
            pool.submit(
                _run_study, plan, target, mlflow_client, study_runs[target.name] or adopt, parent, runner, position
            )
            for position, target in enumerate(plan.targets)
        ]
        wait(futures)
    return [future.result() for future in futures]


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
    return run_id if run_id and runs.is_active_in(mlflow_client, run_id, experiment) else None


def _run_study(
    plan: Plan,
    target: Target,
    mlflow_client: Client,
    run_id: str | None,
    parent_run_id: str | None,
    runner: Executor,
    position: int = 0,
) -> results.StudyResult:
    study = plan.studies[target.name]
    started = time.monotonic()
    n_existing = len(study.get_trials(deepcopy=False))
    study.sampler = spaces.make_sampler(plan.space, plan.seed, n_existing)  # its name is a param; workers make theirs
    tags = {names.KIND_TAG: "study", names.STUDY_TAG: target.name, names.MODEL_TAG: target.model}
    tags |= {names.SPACE_TAG: plan.space.name, names.N_TRIALS_TAG: str(plan.n_trials)}
    parent = None if run_id else parent_run_id  # a resumed study run stays where it was made
    with runs.run(mlflow_client, target.name, resume_run_id=run_id, parent_run_id=parent, tags=tags) as study_run_id:
        study.set_user_attr(RUN_ID_ATTR, study_run_id)
        if not (set(plan.space.distributions) | set(plan.space.tied)) & DATA_PARAMS:  # one data set for all trials
            x, y, path = moons.load_or_generate(RunConfig.from_flat(target.fixed).data)
            runs.log_dataset(mlflow_client, study_run_id, x, y, path)
        params = {key: value for key, value in target.identity.items() if key != "space"}
        params |= {"study": target.name, "space": plan.space.name, "sampler": type(study.sampler).__name__}
        params |= {"pruner": plan.pruner, "n_trials": plan.n_trials, "optuna_storage": studies.redact(plan.storage_url)}
        runs.log_params(mlflow_client, study_run_id, params)
        order = Order(
            space=plan.space.name,
            n_trials=plan.n_trials,
            n_jobs=plan.n_jobs,
            trials_at_once=plan.trials_at_once,
            workers=plan.workers,
            pruner=plan.pruner,
            seed=plan.seed,
            max_epochs=plan.max_epochs,
            target=target,
            study_run_id=study_run_id,
            n_existing=n_existing,
            deadline=time.time() + plan.timeout if plan.timeout else None,
            call=uuid.uuid4().hex[:12],
        )
        env = {STORAGE_ENV: plan.storage_url, "MLFLOW_TRACKING_URI": runs.tracking_uri()}
        env["MLFLOW_EXPERIMENT_ID"] = runs.experiment_id(mlflow_client)  # trials go where their study run is
        env |= lineage.environment()  # workers record the code this call runs, wherever their copy of it lies
        with Progress(
            study, mlflow_client, study_run_id, plan.n_trials, order.call, target.objectives, position
        ) as progress:
            runner.run(work, order, plan.workers, plan.n_jobs, env, progress)
        trials.end_runs_left_running(study, mlflow_client)
        result = results.summarise(study, mlflow_client, study_run_id, target, time.monotonic() - started)
    return result


def work(order: Order, worker: int, signalled: threading.Event) -> None:
    """One worker's loop on a study, in whichever process runs it: trials until the study holds `n_trials`.

    When `signalled` is set (Ctrl-C, SIGTERM), the trial stops at its next epoch and no other
    starts. Raises TooManyFailures when trials keep failing, and ConfigError when this process
    does not see the study or its run (workers on other machines need shared services).
    """
    quiet()
    storage_url = os.environ[STORAGE_ENV]
    storage = studies.open_storage(storage_url, on_stale_trial=trials.on_stale_trial)
    study = studies.load(storage, order.target.name)
    require(
        study is not None,
        f"{studies.redact(storage_url)} holds no study {order.target.name!r}: "
        "workers on other machines need a shared storage (PostgreSQL, say)",
    )
    mlflow_client = runs.client()
    require(
        runs.run_exists(mlflow_client, order.study_run_id),
        f"the tracking store {runs.tracking_uri()} holds no run {order.study_run_id}: "
        "workers on other machines need a shared tracking server",
    )
    space = SPACES[order.space]
    study.sampler = spaces.make_sampler(space, order.seed, order.n_existing, worker)
    study.pruner = spaces.make_pruner(order.pruner, order.max_epochs)
    deadline = None if order.deadline is None else time.monotonic() + order.deadline - time.time()
    who = {"call": order.call, "host": socket.gethostname(), "pid": os.getpid()}

    def fail_stale_trials() -> None:  # from the heartbeat thread, under the gate the worker's threads ask under
        with site.gate:
            optuna.storages.fail_stale_trials(study)

    heartbeats = Heartbeats(storage, watch=fail_stale_trials)
    site = asking.Worksite(
        space=space,
        n_trials=order.n_trials,
        storage=storage,
        heartbeats=heartbeats,
        n_jobs=order.n_jobs,
        trials_at_once=order.trials_at_once,
        workers=order.workers,
        target=order.target,
        study=study,
        mlflow_client=mlflow_client,
        run_id=order.study_run_id,
        deadline=deadline,
        worker=who,
        signalled=signalled,
    )
    try:
        with heartbeats, one_torch_thread():
            trials.work(site)
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError) as error:
        raise studies.lost(storage_url, error) from None
