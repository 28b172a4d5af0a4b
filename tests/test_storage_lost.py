"""A storage lost at any call of a round: the worker stops with the error and leaves no MLflow run RUNNING.

The fault suite (test_faults.py) stops a real PostgreSQL once, at whatever moment the
round has reached; here a real sqlite storage is made to fail from its n-th call on,
for n spread over a whole round, so every step of the round meets the fault.
"""

import threading

import pytest
import sqlalchemy

from moonvae.tracking import runs
from moonvae.tuning import asking, heartbeats, search, trials
from moonvae.tuning.spaces import SPACES

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
TINY = {"n_samples": 200, "max_epochs": 20}  # two reports to the pruner per trial
K = 2
POINTS = 16  # failure points spread over a round's storage calls


class FailingFrom:
    """The study's storage, failing every call from the `after`-th on, as a database that went away."""

    def __init__(self, storage, after: int | None) -> None:
        self._storage, self._after, self.calls = storage, after, 0

    def __getattr__(self, name):
        attribute = getattr(self._storage, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls += 1
            if self._after is not None and self.calls >= self._after:
                raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
            return attribute(*args, **kwargs)

        return call


def run_round(name: str, after: int | None) -> tuple[FailingFrom, list[str], BaseException | None]:
    """One worker's K trials on a fresh study whose storage fails from call `after`; the storage, statuses, error."""
    plan = search.plan(model="vae", space="basic", n_trials=K, fixed=TINY, study_base=name, trials_at_once=K)
    target = plan.targets[0]
    study = plan.studies[target.name]
    failing = FailingFrom(study._storage, after)
    study._storage = failing
    client = runs.client()
    error = None
    with runs.run(client, name, tags={"test.round": name}) as study_run, heartbeats.Heartbeats(plan.storage) as beats:
        site = asking.Worksite(
            space=SPACES["basic"], n_trials=K, storage=plan.storage, heartbeats=beats, n_jobs=1, trials_at_once=K,
            workers=1, target=target, study=study, mlflow_client=client, run_id=study_run, deadline=None,
            worker={}, signalled=threading.Event(),
        )  # fmt: skip
        try:
            trials.work(site)
        except Exception as raised:
            error = raised
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    found = client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{study_run}'")
    return failing, [run.info.status for run in found], error


def test_a_storage_lost_anywhere_in_a_round_leaves_no_run_running(workdir):
    clean, statuses, error = run_round("clean", None)
    assert error is None and statuses == ["FINISHED"] * K
    total = clean.calls
    assert total > POINTS
    last = total - 2  # a round's count varies by a call or two from run to run: its last reads may not be made
    for after in sorted({1 + round(i * (last - 1) / (POINTS - 1)) for i in range(POINTS)}):
        failing, statuses, error = run_round(f"fails-at-{after}", after)
        assert isinstance(error, sqlalchemy.exc.OperationalError), (after, error)
        assert "RUNNING" not in statuses, (after, total, statuses)
        assert failing.calls >= after  # the fault was met
