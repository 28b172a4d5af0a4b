"""A worker's trials: asked (asking.py), trained in nested MLflow runs, told to Optuna as each ended.

With `trials_at_once` K > 1 a worker works in rounds: it asks K trials, trains them
as one vectorised stack (batched.fit_batch), then tells Optuna how each ended, in
trial order. Within a round no trial sees another's values (the median pruner and
TPE read finished trials only, and TPE's constant liar spreads a round's asks), so
a round's trials are the same whatever the timing: a study with one worker is the
same trial for trial on every run, at any K.
"""

from __future__ import annotations

import copy
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from moonvae.config import RunConfig
from moonvae.core import batched
from moonvae.core.train import EpochMetrics, TrainResult, fit
from moonvae.tracking import names, runs
from moonvae.tracking.experiment import TrackedRun
from moonvae.tracking.runs import Client
from moonvae.tuning import asking, results, spaces
from moonvae.tuning.asking import Worksite
from moonvae.tuning.executor import first_line
from moonvae.tuning.heartbeats import stale_reason
from moonvae.tuning.studies import MODEL_ID_ATTR, RUN_ID_ATTR, SOURCE_ATTR, WORKER_ATTR

REPORT_EVERY = 10  # epochs between reports to the pruner: each report is a storage write (~4 ms on sqlite)
STALE_RETRIES = 2  # a trial whose worker died is queued again this often, then left failed (it may kill its worker)
TRIAL_ATTRS = ("test_mse", "test_kl", "train_mse", "active_units", "mutual_info", "mmd_summary", "mmd_summary_se")


class TooManyFailures(RuntimeError):
    """Several trials in a row failed: the cause is not one trial's parameters."""


def on_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose worker died, just failed by Optuna: queue it again with its parameters, and end its run FAILED.

    Queued by Optuna's RetryHeartbeatStaleTrialCallback (formerly RetryFailedTrialCallback),
    at most STALE_RETRIES times, without the dead worker's run and worker attributes.
    """
    queued = copy.copy(trial)
    queued.user_attrs = {}
    RetryHeartbeatStaleTrialCallback(max_retry=STALE_RETRIES)(study, queued)
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        try:
            _end_stale_run(runs.client(), run_id)
        except runs.TrackingError as error:  # the tracking server is away longer than its retries: ended later
            print(f"run {run_id} of failed trial {trial.number} not ended yet: {first_line(error)}", file=sys.stderr)


def _end_stale_run(mlflow_client: Client, run_id: str) -> None:
    if runs.end_if_running(mlflow_client, run_id, runs.FAILED, stale_reason()):
        runs.set_tag(mlflow_client, run_id, names.TRIAL_STATE_TAG, TrialState.FAIL.name)


def end_runs_left_running(study: optuna.Study, mlflow_client: Client) -> None:
    """End the runs of failed trials still RUNNING: a stale trial whose run the tracking server was away to end."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.user_attrs.get(RUN_ID_ATTR):
            _end_stale_run(mlflow_client, trial.user_attrs[RUN_ID_ATTR])


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
    if site.failures_in_row >= asking.MAX_FAILURES_IN_ROW:
        raise TooManyFailures(f"{site.failures_in_row} trials in a row failed, the last with {site.last_failure}")


def _work(site: Worksite) -> None:
    if site.trials_at_once == 1:
        while (trial := asking.next_trial(site)) is not None:
            _run_trial(site, trial)
        return
    while trials := asking.next_trials(site):
        _run_round(site, trials)


def _start_run(site: Worksite, trial: optuna.Trial) -> str:
    """The trial's MLflow run, nested under the study run, and the trial's pointers to it and its worker."""
    tags = {names.KIND_TAG: "trial", names.STUDY_TAG: site.target.name, names.TRIAL_TAG: str(trial.number)}
    tags |= {names.MODEL_TAG: site.target.model, names.SPACE_TAG: site.space.name}
    run_id = runs.start_run(site.mlflow_client, f"trial-{trial.number:03d}", parent_run_id=site.run_id, tags=tags)
    try:
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        trial.set_user_attr(WORKER_ATTR, site.worker)
    except BaseException as error:  # the storage lost: the trial cannot point at its run, so the run ends here
        runs.end_after(site.mlflow_client, run_id, error)
        raise
    return run_id


def _config(site: Worksite, trial: optuna.Trial) -> RunConfig:
    return RunConfig.from_flat({**site.target.fixed, **site.space.config_values(trial.params)}).validate()


def _tracked_run(site: Worksite, trial: optuna.Trial, run_id: str) -> TrackedRun:
    """A trial's run logs its kept model's snapshot only: the one the UI's image grid compares across trials."""
    return TrackedRun(_config(site, trial), site.mlflow_client, run_id, snapshot_epochs=frozenset())


def _conclude(site: Worksite, trial: optuna.Trial, tracked: TrackedRun, result: TrainResult) -> list[float]:
    """Measure and log a trained trial, its model only if it leads; keep what the findings read; its values.

    The rule for judging its samples: in full (the latent mixture fitted, every source to a 5%
    standard error, the check scores, the default source) where the result is used, else
    screened (sources.screen_sources: the MMD of its posterior and prior on a few sets, a
    twentieth of the cost). Used: every trial of a study whose objectives read the judgement
    (the generative one), and a trial that leads on objectives known before any judging (a
    single-objective study's best_val_mse or val_nelbo), as it logs the model a study registers.
    """
    outcome = tracked.measure(result)
    final = outcome.final_metrics()
    known = all(name in final for name in site.target.objectives)  # the objectives no judgement is needed for
    leads = known and _leads(site.study, [final[name] for name in site.target.objectives])
    tracked.finish(outcome, full=leads or not known, log_model=False)
    final = outcome.final_metrics()
    values = [final[name] for name in site.target.objectives]
    if not known:
        leads = _leads(site.study, values)
    if leads:
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
        run_id = _start_run(site, trial)
        tracked = _tracked_run(site, trial, run_id)
        reporter = _reporter(site, trial, _askable(site))

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
    try:
        if reason:
            trial.set_user_attr("reason", reason[:1000])
        site.study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    except UpdateFinishedTrialError:  # failed as stale while it ran (the storage was away longer than the grace)
        state, values, reason = TrialState.FAIL, None, stale_reason()
        if run_id:
            runs.end_run(site.mlflow_client, run_id, runs.FAILED, reason)
    finally:
        site.heartbeats.release(trial._trial_id)
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
    try:
        for entry in entries:
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
    lost: Exception | None = None  # the storage or tracking server lost while ending a trial: raised once all ended
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
        except Exception as error:
            lost = lost or error  # the other trials' runs are ended all the same
    if lost is not None:
        raise lost
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

    def on_epoch(index: int, metrics: EpochMetrics) -> None:
        tracked[index].log_epoch(metrics)
        reporters[index](metrics)

    data = tracked[0].data
    try:
        askable = _askable(site)  # reads the study: a lost storage fails the group, whose runs then end
        reporters = [_reporter(site, entry.trial, askable) for entry in group]
        members = batched.fit_batch(
            [each.config for each in tracked],
            data.train,
            data.val,
            on_epoch,
            networks=[each.network for each in tracked],
        )
    except Exception as error:  # the stack itself broke, or the storage: every member fails with it
        for entry in group:
            entry.error = error
        return
    for entry, member in zip(group, members, strict=True):
        entry.result, entry.error = member.result, member.error


def _askable(site: Worksite) -> Callable[[int], bool]:
    """The steps at which the pruner's answer can change, from the complete trials as a trial or round starts.

    A worker's own rounds tell Optuna between them, so a single worker sees every complete
    trial; a trial completed by another worker meanwhile counts from this worker's next round.
    """
    complete = site.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return spaces.askable(site.study.pruner, complete)


def _reporter(site: Worksite, trial: optuna.Trial, askable: Callable[[int], bool]) -> Callable[[EpochMetrics], None]:
    """Per epoch: stop on Ctrl-C elsewhere; every REPORT_EVERY epochs report val MSE, and ask the pruner where its
    answer can change (`askable`).

    Multi-objective studies are never pruned: Optuna's Trial.report refuses them.
    """

    def on_epoch(metrics: EpochMetrics) -> None:
        if site.stopping():
            raise KeyboardInterrupt
        if (metrics.epoch + 1) % REPORT_EVERY == 0 and not site.space.multi_objective:
            trial.report(metrics.val_mse, metrics.epoch)
            if askable(metrics.epoch) and trial.should_prune():  # asking reads the study from the storage
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
