"""A worker's asks: whether the study still needs a trial, and which, so workers stop together at `n_trials`.

A worker asks for a trial only after counting, under a lock, the trials the study
already holds, finished or running: so workers stop together at `n_trials`, and a
second call on a study runs only the missing trials. Failed trials do not count, so
a crash never shortens a study. A trial is covered by a heartbeat from the moment it
is asked (heartbeats.py).

When the running trials would complete the study, a worker waits only for those that
may have lost their worker: a trial whose heartbeat moves while it waits is held by a
live worker, which replaces it itself if it fails. A trial whose heartbeat stops is
failed after the grace period and queued again, and this worker runs it. Waiting is
never silent (a line every SAY_EVERY_SECONDS) nor endless: a trial that neither beats
nor goes stale within WAIT_LIMIT_SECONDS (its heartbeat lies in the future, say) ends
the call with WaitedTooLong.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from moonvae.tracking.runs import Client
from moonvae.tuning import studies
from moonvae.tuning.heartbeats import GRACE_SECONDS, HEARTBEAT_SECONDS, Beat, Heartbeats, Storage
from moonvae.tuning.spaces import Space
from moonvae.tuning.studies import WORKER_ATTR, Target

WAIT_SECONDS = 1.0  # poll interval while other processes finish the study's last trials (two queries a poll)
SAY_EVERY_SECONDS = 30.0  # between lines while waiting; the first once a live trial would have beaten twice
SURPLUS_REASON = "one too many: another worker took the study's last place at the same moment"
WAIT_LIMIT_SECONDS = 2 * GRACE_SECONDS  # a dead worker's trial is stale after GRACE_SECONDS: twice that is broken
GRID_ATTEMPTS = 2  # a grid point that fails is tried once more, then left out
MAX_FAILURES_IN_ROW = 5  # then something is broken beyond one trial: stop the call


@dataclass
class Worksite:
    """The shared state of one study's workers (threads) in one process."""

    space: Space
    n_trials: int
    storage: Storage
    heartbeats: Heartbeats  # of every trial asked here, until it is told
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


def next_trials(site: Worksite) -> list[optuna.Trial]:
    """Up to K trials for one round: the first as `next_trial` asks it, the others while places are free.

    A round takes at most its thread's share of the free places, so the call's other
    workers and threads do not wait while one trains the study's last trials alone.
    """
    with site.gate:
        first = next_trial(site)
        if first is None:
            return []
        counts = studies.count(site.study.get_trials(deepcopy=False))
        free = site.n_trials - counts["done"] - counts["running"] + 1  # the first one's place included
        share = max(1, math.ceil(free / (site.workers * site.n_jobs)))
        asked = [first]
        while len(asked) < min(site.trials_at_once, share) and (trial := next_trial(site, wait=False)) is not None:
            asked.append(trial)
        return asked


class WaitedTooLong(RuntimeError):
    """Trials held elsewhere neither beat nor went stale within WAIT_LIMIT_SECONDS: the storage cannot fail them."""


def next_trial(site: Worksite, wait: bool = True) -> optuna.Trial | None:
    """Ask for a trial if the study still needs one, counting running trials as done-to-be.

    When the running ones would complete the study, wait (unless told not to) while any
    of them may have lost its worker: if it is failed, this worker runs it again. Runs
    under the gate so two workers never both take the last place.
    """
    with site.gate:
        waiting: _Wait | None = None
        while True:
            if site.stopping() or site.failures_in_row >= MAX_FAILURES_IN_ROW:
                return None
            if site.deadline is not None and time.monotonic() >= site.deadline:
                return None
            optuna.storages.fail_stale_trials(site.study)
            trials = site.study.get_trials(deepcopy=False)
            counts = studies.count(trials)
            if counts["done"] >= site.n_trials:
                if _queued_retry_first(trials):
                    _ask(site)  # takes it from the queue and gives its place back: the study is full
                    continue
                return None
            if counts["done"] + counts["running"] < site.n_trials:
                if site.space.grid is None or counts["waiting"] or _grid_point_available(site):
                    if (trial := _ask(site)) is not None:
                        return trial
                    continue  # another process took the last place meanwhile: count again
                if not counts["running"]:
                    return None  # every grid point was run or failed too often
            if not wait:
                return None
            waiting = waiting or _Wait()
            if not _suspects(site, waiting):
                return None  # live workers hold the study's last trials: they end it
            site.gate.wait(WAIT_SECONDS)


def _ask(site: Worksite) -> optuna.Trial | None:
    """A new trial (or a queued one), covered by a heartbeat from now on; None if it is one too many.

    Processes count and ask apart, so two may take the study's last place at the same
    moment. Of such trials the later one (by number) gives its place back: it ends FAIL
    at once, so the study never holds more than `n_trials` done, whatever the timing.
    """
    trial = site.study.ask(fixed_distributions=site.space.distributions)
    site.heartbeats.hold(trial._trial_id)
    before = [other for other in site.study.get_trials(deepcopy=False) if other.number < trial.number]
    if sum(other.state != TrialState.FAIL for other in before) < site.n_trials:
        return trial
    trial.set_user_attr("reason", SURPLUS_REASON)
    site.study.tell(trial, state=TrialState.FAIL)
    site.heartbeats.release(trial._trial_id)
    return None


def _queued_retry_first(trials: list[FrozenTrial]) -> bool:
    """Whether the next trial `ask` takes from the queue (the first WAITING) is a stale trial's retry.

    A worker fails a stale trial and then queues its retry; a trial asked by another in
    between takes the freed place, and the retry is left queued in a full study. Asked
    once the study is full, it ends FAIL at once as one too many. Trials queued by
    hand are left queued for a later call with more trials.
    """
    queued = next((trial for trial in trials if trial.state == TrialState.WAITING), None)
    return queued is not None and RetryHeartbeatStaleTrialCallback.retried_trial_number(queued) is not None


@dataclass
class _Wait:
    """A wait for trials held elsewhere: since when, and each trial's heartbeat when it was first seen."""

    started: float = field(default_factory=time.monotonic)
    first: dict[int, datetime | None] = field(default_factory=dict)
    said: float = -math.inf


def _suspects(site: Worksite, waiting: _Wait) -> bool:
    """Whether a running trial held elsewhere has not beaten since the wait began; says so, gives up past the limit."""
    suspects: dict[int, Beat] = {}
    for trial_id, beat in site.storage.heartbeats(site.study._study_id).items():
        if site.heartbeats.holds(trial_id):
            continue  # this process's own: alive
        if waiting.first.get(trial_id) is None:  # first seen now (or only now with a heartbeat)
            waiting.first[trial_id] = beat.at
        if beat.at is None or beat.at == waiting.first[trial_id]:
            suspects[trial_id] = beat
    if not suspects:
        return False
    waited = time.monotonic() - waiting.started
    if waited >= WAIT_LIMIT_SECONDS:
        raise WaitedTooLong(
            f"gave up after {WAIT_LIMIT_SECONDS} s waiting for {_held(site, suspects)}: their heartbeats neither "
            f"moved nor went stale ({GRACE_SECONDS} s); is the storage's clock right?"
        )
    if waited >= 2 * HEARTBEAT_SECONDS and time.monotonic() - waiting.said >= SAY_EVERY_SECONDS:
        waiting.said = time.monotonic()
        tqdm.write(
            f"{site.study.study_name}: waiting {waited:.0f} s for {_held(site, suspects)}, whose heartbeats have "
            f"not moved; a trial without one for {GRACE_SECONDS} s is failed and run again, "
            f"and this worker gives up after {WAIT_LIMIT_SECONDS} s",
            file=sys.stderr,
        )
    return True


def _held(site: Worksite, suspects: dict[int, Beat]) -> str:
    """`trials 3, 4 (host:pid, heartbeat 12 s old)`: which trials, held by whom, how old their heartbeats are."""
    trials = {trial._trial_id: trial for trial in site.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    parts = []
    for trial_id, beat in sorted(suspects.items(), key=lambda item: item[1].number):
        worker = trials[trial_id].user_attrs.get(WORKER_ATTR) if trial_id in trials else None
        holder = f"{worker['host']}:{worker['pid']}" if worker else "a worker that had not started it"
        age = "no heartbeat" if beat.age is None else f"heartbeat {beat.age:.0f} s old"
        parts.append(f"{beat.number} ({holder}, {age})")
    return f"trial{'s' if len(parts) > 1 else ''} {', '.join(parts)} of {site.study.study_name}"


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
