"""A worker's asks: whether the study still needs a trial, and which, so workers stop together at `n_trials`.

A worker asks for a trial only after counting, under a lock, the trials the study
already holds, finished or running: so workers stop together at `n_trials`, and a
second call on a study runs only the missing trials. Failed trials do not count, so
a crash never shortens a study.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from moonvae.tracking.runs import Client
from moonvae.tuning import studies
from moonvae.tuning.spaces import Space
from moonvae.tuning.studies import Target

WAIT_SECONDS = 1.0  # poll interval while other processes finish the study's last trials (two queries a poll)
GRID_ATTEMPTS = 2  # a grid point that fails is tried once more, then left out
MAX_FAILURES_IN_ROW = 5  # then something is broken beyond one trial: stop the call


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


def next_trial(site: Worksite, wait: bool = True) -> optuna.Trial | None:
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
            counts = studies.count(site.study.get_trials(deepcopy=False))
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
