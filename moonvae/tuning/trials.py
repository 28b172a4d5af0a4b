"""A worker's trials: ask Optuna, train in a nested MLflow run, tell Optuna how each ended.

A worker asks for a trial only after counting, under a lock, the trials the study
already holds, finished or running: so workers stop together at `n_trials`, and a
second call on a study runs only the missing trials. Failed trials do not count, so
a crash never shortens a study.

With `trials_at_once` K > 1 a worker works in rounds: it asks K trials, trains them
as one vectorised stack (batched.fit_batch), then tells Optuna how each ended, in
trial order. Within a round no trial sees another's values (the median pruner and
TPE read finished trials only, and TPE's constant liar spreads a round's asks), so
a round's trials are the same whatever the timing: a study with one worker is the
same trial for trial on every run, at any K.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize uses; ask/tell has no public one
from optuna.trial import FrozenTrial, TrialState

from moonvae.config import RunConfig
from moonvae.core import batched
from moonvae.core.train import EpochMetrics, TrainResult, fit
from moonvae.tracking import names, runs
from moonvae.tracking.experiment import TrackedRun
from moonvae.tracking.runs import Client
from moonvae.tuning import results, spaces, studies
from moonvae.tuning.spaces import Space
from moonvae.tuning.studies import MODEL_ID_ATTR, RUN_ID_ATTR, SOURCE_ATTR, WORKER_ATTR, Target

REPORT_EVERY = 10  # epochs between reports to the pruner: each report is a storage write (~4 ms on sqlite)
WAIT_SECONDS = 1.0  # poll interval while other processes finish the study's last trials (two queries a poll)
GRID_ATTEMPTS = 2  # a grid point that fails is tried once more, then left out
MAX_FAILURES_IN_ROW = 5  # then something is broken beyond one trial: stop the call
TRIAL_ATTRS = ("test_mse", "test_kl", "train_mse", "active_units", "mutual_info", "mmd_ratio")  # kept with each trial


class TooManyFailures(RuntimeError):
    """Several trials in a row failed: the cause is not one trial's parameters."""


@dataclass
class Worksite:
    """The shared state of one study's workers (threads) in one process."""

    space: Space
    n_trials: int
    storage: RDBStorage
    n_jobs: int  # threads working on the study here
    trials_at_once: int  # K: trials a thread trains together as one stack
    workers: int  # the call's worker processes (or Ray tasks): a round takes no more than its share of the places
    target: Target
    study: optuna.Study
    mlflow_client: Client
    run_id: str  # the study run: the trials' parent
    deadline: float | None  # time.monotonic() after which no trial starts
    worker: dict[str, Any]  # who runs the trials: WORKER_ATTR
    signalled: threading.Event  # the process was asked to stop
    gate: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)  # a worker thread was stopped or failed
    failures_in_row: int = 0
    last_failure: str = ""

    def stopping(self) -> bool:
        return self.stop.is_set() or self.signalled.is_set()


def end_stale_trial_run(study: optuna.Study, trial: FrozenTrial) -> None:
    """A dead worker's trial was failed by heartbeat: end its MLflow run too."""
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if not run_id:
        return
    mlflow_client = runs.client()
    reason = f"its worker stopped (no heartbeat for {studies.GRACE_SECONDS} s)"
    if runs.end_if_running(mlflow_client, run_id, runs.FAILED, reason):
        runs.set_tag(mlflow_client, run_id, names.TRIAL_STATE_TAG, TrialState.FAIL.name)


def work(site: Worksite) -> None:
    """n_jobs threads on one study; Ctrl-C stops them all at their next epoch, ending their runs KILLED."""
    if site.n_jobs == 1:
        _work(site)
    else:
        with ThreadPoolExecutor(site.n_jobs, thread_name_prefix="trial") as pool:
            futures = [pool.submit(_work, site) for _ in range(site.n_jobs)]
            try:
                for future in wait(futures, return_when=FIRST_EXCEPTION).done:
                    future.result()  # a worker's error (a lost storage, say) stops the others too
            except BaseException:
                site.stop.set()
                with site.gate:
                    site.gate.notify_all()
                raise
    if site.failures_in_row >= MAX_FAILURES_IN_ROW:
        raise TooManyFailures(f"{site.failures_in_row} trials in a row failed, the last with {site.last_failure}")


def _work(site: Worksite) -> None:
    if site.trials_at_once == 1:
        while (trial := _next_trial(site)) is not None:
            _run_trial(site, trial)
        return
    while trials := _next_trials(site):
        _run_round(site, trials)


def _count(study: optuna.Study) -> Counter[str]:
    states = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    return Counter(
        done=states[TrialState.COMPLETE] + states[TrialState.PRUNED],
        running=states[TrialState.RUNNING],
        waiting=states[TrialState.WAITING],
        failed=states[TrialState.FAIL],
    )


def _next_trials(site: Worksite) -> list[optuna.Trial]:
    """Up to K trials for one round: the first as `_next_trial` asks it, the others while places are free.

    A round takes at most its thread's share of the free places, so the call's other
    workers and threads do not wait while one trains the study's last trials alone.
    """
    with site.gate:
        first = _next_trial(site)
        if first is None:
            return []
        counts = _count(site.study)
        free = site.n_trials - counts["done"] - counts["running"] + 1  # the first one's place included
        share = max(1, math.ceil(free / (site.workers * site.n_jobs)))
        asked = [first]
        while len(asked) < min(site.trials_at_once, share) and (trial := _next_trial(site, wait=False)) is not None:
            asked.append(trial)
        return asked


def _next_trial(site: Worksite, wait: bool = True) -> optuna.Trial | None:
    """Ask for a trial if the study still needs one, counting running trials as done-to-be.

    When the running ones would complete the study, wait (unless told not to): if one of
    them fails, this worker replaces it. Runs under the gate so two workers never both
    take the last place.
    """
    with site.gate:
        while True:
            if site.stopping() or site.failures_in_row >= MAX_FAILURES_IN_ROW:
                return None
            if site.deadline is not None and time.monotonic() >= site.deadline:
                return None
            optuna.storages.fail_stale_trials(site.study)
            counts = _count(site.study)
            if counts["done"] >= site.n_trials:
                return None
            if counts["done"] + counts["running"] < site.n_trials:
                if site.space.grid is None or counts["waiting"] or _grid_point_available(site):
                    return site.study.ask(fixed_distributions=site.space.distributions)
                if not counts["running"]:
                    return None  # every grid point was run or failed too often
            if not wait:
                return None
            site.gate.wait(WAIT_SECONDS)


def _grid_point_available(site: Worksite) -> bool:
    """True when a grid point was never tried (the sampler picks it) or failed and may be tried again.

    A failed point is queued here, so the next `ask` takes it: the grid sampler counts failed points as visited.
    """
    space = site.space
    tried: dict[tuple[Any, ...], list[TrialState]] = {point: [] for point in space.points()}
    for trial in site.study.get_trials(deepcopy=False):
        params = trial.params or trial.system_attrs.get("fixed_params", {})
        tried.setdefault(space.point(params), []).append(trial.state)
    for point, states in tried.items():
        if states and all(state == TrialState.FAIL for state in states) and len(states) < GRID_ATTEMPTS:
            site.study.enqueue_trial(dict(zip(space.grid or {}, point, strict=True)))
            return True
    return any(not states for states in tried.values())


def _start_run(site: Worksite, trial: optuna.Trial) -> str:
    """The trial's MLflow run, nested under the study run, and the trial's pointers to it and its worker."""
    tags = {names.KIND_TAG: "trial", names.STUDY_TAG: site.target.name, names.TRIAL_TAG: str(trial.number)}
    tags |= {names.MODEL_TAG: site.target.model, names.SPACE_TAG: site.space.name}
    run_id = runs.start_run(site.mlflow_client, f"trial-{trial.number:03d}", parent_run_id=site.run_id, tags=tags)
    trial.set_user_attr(RUN_ID_ATTR, run_id)
    trial.set_user_attr(WORKER_ATTR, site.worker)
    return run_id


def _config(site: Worksite, trial: optuna.Trial) -> RunConfig:
    return RunConfig.from_flat({**site.target.fixed, **site.space.config_values(trial.params)}).validate()


def _tracked_run(site: Worksite, trial: optuna.Trial, run_id: str) -> TrackedRun:
    """A trial's run logs its kept model's snapshot only: the one the UI's image grid compares across trials."""
    return TrackedRun(_config(site, trial), site.mlflow_client, run_id, snapshot_epochs=frozenset())


def _conclude(site: Worksite, trial: optuna.Trial, tracked: TrackedRun, result: TrainResult) -> list[float]:
    """Measure and log a trained trial, its model only if it leads; keep what the findings read; its values."""
    outcome = tracked.finish(result, log_model=False)
    final = outcome.final_metrics()
    values = [final[name] for name in site.target.objectives]
    if _leads(site.study, values):
        trial.set_user_attr(MODEL_ID_ATTR, tracked.log_model(outcome).model_id)
    for key in TRIAL_ATTRS:
        trial.set_user_attr(key, final[key])
    trial.set_user_attr(SOURCE_ATTR, outcome.judgement.default)
    return values


def _leads(study: optuna.Study, values: list[float]) -> bool:
    """Whether values beat every complete trial's (one objective) or no complete trial's dominate them (several).

    Only such a trial can end as the study's best or on its front, so only it logs a model: the
    registered best always has one, and the other trials skip the cost (a third of a trial's bookkeeping).
    """
    others = [trial.values for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(values) == 1:
        return all(values[0] < other[0] for other in others)
    return not any(results.dominates(other, values) for other in others)


def _run_trial(site: Worksite, trial: optuna.Trial) -> None:
    """Train one trial in its own MLflow run, nested under the study run, and tell Optuna how it ended."""
    values, error, run_id = None, None, None
    try:
        with get_heartbeat_thread(trial._trial_id, site.storage):
            run_id = _start_run(site, trial)
            tracked = _tracked_run(site, trial, run_id)
            reporter = _reporter(site, trial)

            def on_epoch(metrics: EpochMetrics) -> None:
                tracked.log_epoch(metrics)
                reporter(metrics)

            try:
                result = fit(tracked.network, tracked.data.train, tracked.data.val, tracked.config.train, on_epoch)
            finally:
                tracked.close()
            values = _conclude(site, trial, tracked, result)
    except (Exception, KeyboardInterrupt) as raised:
        error = raised
    _end(site, trial, run_id, values, error)


def _end(
    site: Worksite, trial: optuna.Trial, run_id: str | None, values: list[float] | None, error: BaseException | None
) -> None:
    """End the trial's run and tell Optuna: COMPLETE, PRUNED, or FAIL with the reason (Ctrl-C: KILLED, FAIL)."""
    if run_id:
        runs.end_after(site.mlflow_client, run_id, error, killed_by=(optuna.TrialPruned,))
    state = TrialState.COMPLETE if error is None else TrialState.FAIL
    reason = ""
    if isinstance(error, optuna.TrialPruned):
        state, reason = TrialState.PRUNED, str(error)
    elif isinstance(error, KeyboardInterrupt):
        reason = "interrupted"
    elif error is not None:
        reason = f"{type(error).__name__}: {error}"
    if reason:
        trial.set_user_attr("reason", reason[:1000])
    site.study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    if run_id:
        runs.set_tag(site.mlflow_client, run_id, names.TRIAL_STATE_TAG, state.name)
    _report_progress(site, trial.number, state, values, reason)
    if isinstance(error, KeyboardInterrupt):
        _stop_others(site)


def _stop_others(site: Worksite) -> None:
    """Ctrl-C ended a trial: the site's other threads stop at their next epoch, and the main thread raises it again."""
    site.stop.set()
    if threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


@dataclass
class _Entry:
    """A trial of a round, from its start to its end."""

    trial: optuna.Trial
    run_id: str | None = None
    tracked: TrackedRun | None = None
    result: TrainResult | None = None
    error: BaseException | None = None


def _run_round(site: Worksite, trials: list[optuna.Trial]) -> None:
    """Train a round's trials together, each in its own run, and end them in trial order.

    Trials that share their data, batch size, model kind and depths train as one
    fit_batch call; each reports to the pruner and stops on its own, the others go
    on. Ctrl-C stops the round: every trial of it ends KILLED and FAIL.
    """
    entries = [_Entry(trial) for trial in trials]
    with ExitStack() as beats:
        try:
            for entry in entries:
                beats.enter_context(get_heartbeat_thread(entry.trial._trial_id, site.storage))
                try:
                    entry.run_id = _start_run(site, entry.trial)
                    entry.tracked = _tracked_run(site, entry.trial, entry.run_id)
                except Exception as error:
                    entry.error = error
            for group in _groups([entry for entry in entries if entry.error is None]):
                _train_group(site, group)
        except KeyboardInterrupt as stopped:
            for entry in entries:
                entry.error = entry.error or stopped
        finally:
            for entry in entries:
                if entry.tracked is not None:
                    entry.tracked.close()
        interrupt: KeyboardInterrupt | None = None
        for entry in entries:
            values = None
            if entry.error is None and interrupt is not None:
                entry.error = interrupt  # Ctrl-C while an earlier trial of the round was measured
            elif entry.error is None:
                try:
                    assert entry.tracked is not None and entry.result is not None
                    values = _conclude(site, entry.trial, entry.tracked, entry.result)
                except KeyboardInterrupt as stop:
                    interrupt = entry.error = stop
                except Exception as error:
                    entry.error = error
            try:
                _end(site, entry.trial, entry.run_id, values, entry.error)
            except KeyboardInterrupt:
                continue  # the round's other trials end too; the interrupt is raised again below
    if any(isinstance(entry.error, KeyboardInterrupt) for entry in entries):
        _stop_others(site)


def _groups(entries: list[_Entry]) -> list[list[_Entry]]:
    """Entries that may share a stack (batched.shared), in trial order."""
    groups: dict[tuple[Any, ...], list[_Entry]] = defaultdict(list)
    for entry in entries:
        assert entry.tracked is not None
        groups[tuple(batched.shared(entry.tracked.config).values())].append(entry)
    return list(groups.values())


def _train_group(site: Worksite, group: list[_Entry]) -> None:
    """One fit_batch call; each member's epochs are logged and reported as its own; a member's error is its own."""
    tracked = [entry.tracked for entry in group]
    assert all(each is not None for each in tracked)
    reporters = [_reporter(site, entry.trial) for entry in group]

    def on_epoch(index: int, metrics: EpochMetrics) -> None:
        tracked[index].log_epoch(metrics)
        reporters[index](metrics)

    data = tracked[0].data
    try:
        members = batched.fit_batch(
            [each.config for each in tracked],
            data.train,
            data.val,
            on_epoch,
            networks=[each.network for each in tracked],
        )
    except Exception as error:  # the stack itself broke: every member fails with it
        for entry in group:
            entry.error = error
        return
    for entry, member in zip(group, members, strict=True):
        entry.result, entry.error = member.result, member.error


def _reporter(site: Worksite, trial: optuna.Trial) -> Callable[[EpochMetrics], None]:
    """Per epoch: stop on Ctrl-C elsewhere; every REPORT_EVERY epochs report val MSE and maybe prune.

    Multi-objective studies are never pruned: Optuna's Trial.report refuses them.
    """

    def on_epoch(metrics: EpochMetrics) -> None:
        if site.stopping():
            raise KeyboardInterrupt
        if (metrics.epoch + 1) % REPORT_EVERY == 0 and not site.space.multi_objective:
            trial.report(metrics.val_mse, metrics.epoch)
            # no pruner stops a trial before PRUNE_AFTER_EPOCHS; asking reads every trial from the storage
            if metrics.epoch >= spaces.PRUNE_AFTER_EPOCHS and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch} (val_mse {metrics.val_mse:.5f})")

    return on_epoch


def _report_progress(site: Worksite, number: int, state: TrialState, values: list[float] | None, reason: str) -> None:
    """Count failures in a row, log the trial's objectives on the study run, and wake the workers waiting."""
    with site.gate:
        if state == TrialState.FAIL:
            site.failures_in_row += 1
            site.last_failure = reason
        else:
            site.failures_in_row = 0
        if values is not None:
            trial_metrics = results.trial_metrics(site.target.objectives, values)
            runs.log_metrics(site.mlflow_client, site.run_id, trial_metrics, step=number)
        site.gate.notify_all()
