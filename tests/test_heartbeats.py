"""No trial without a heartbeat, and no silent or endless wait: what a dead worker leaves, on a real sqlite storage.

Each test leaves in the study what a worker leaves when it dies at some instant (a
trial asked with or without a heartbeat, a run RUNNING), then runs the tuner on it.
Heartbeats and grace are shortened to a second; the fault suite (test_faults.py)
kills real workers.
"""

import sqlite3
import subprocess
import sys
import threading
import time

import optuna
import pytest
from conftest import subprocess_env
from optuna.trial import TrialState

from moonvae.tracking import runs
from moonvae.tuning import asking, heartbeats, search, studies
from moonvae.tuning.spaces import SPACES

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
TINY = {"n_samples": 200, "max_epochs": 12}
STUDY = "moonvae-vae-basic"
BOUND = 120  # seconds: where the tuner used to wait forever, these tests end and fail instead


@pytest.fixture
def short_heartbeats(monkeypatch):
    monkeypatch.setattr(heartbeats, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(heartbeats, "GRACE_SECONDS", 1)


def states(study):
    return sorted(trial.state.name for trial in study.trials)


def test_a_dead_workers_trial_is_failed_its_run_ended_and_it_is_run_again(workdir, short_heartbeats):
    client = runs.client()
    plan = search.plan(model="vae", n_trials=1, fixed=TINY)
    study = plan.studies[STUDY]
    orphan = study.ask(fixed_distributions=SPACES["basic"].distributions)  # a killed worker's trial and run
    plan.storage.record_heartbeat(orphan._trial_id)
    with runs.run(client, "trial-000") as orphan_run:
        orphan.set_user_attr("mlflow_run_id", orphan_run)
        threading.Event().wait(2.5)  # the heartbeat goes stale
        search.run(plan, client)
        assert client.get_run(orphan_run).info.status == "FAILED"
    dead, again = study.trials
    assert (dead.state, again.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert again.params == dead.params and again.system_attrs["failed_trial"] == dead.number  # the same point
    assert again.user_attrs["mlflow_run_id"] != orphan_run  # a run of its own, not the dead one's


def test_a_trial_asked_but_never_covered_is_failed_and_run_again(workdir, short_heartbeats):
    """A worker killed between Optuna's insert of a trial and its first heartbeat: no heartbeat row at all."""
    plan = search.plan(model="vae", n_trials=2, fixed=TINY, timeout=BOUND)
    study = plan.studies[STUDY]
    orphan = study.ask(fixed_distributions=SPACES["basic"].distributions)
    assert plan.storage.heartbeats(study._study_id)[orphan._trial_id].at is None
    search.run(plan, runs.client())
    assert states(study) == ["COMPLETE", "COMPLETE", "FAIL"]
    assert study.trials[0].state == TrialState.FAIL
    assert [trial.params for trial in study.trials[1:]].count(orphan.params) == 1  # run again, once


def test_a_worker_does_not_wait_for_trials_that_a_live_worker_holds(workdir, short_heartbeats):
    """Their worker replaces them itself if they fail: waiting for them could last as long as they train."""
    plan = search.plan(model="vae", n_trials=2, fixed=TINY)
    study = plan.studies[STUDY]
    held = study.ask(fixed_distributions=SPACES["basic"].distributions)
    stop = threading.Event()

    def beat() -> None:  # another worker, alive, training `held` (then dead: a waiting worker would run it again)
        for _ in range(BOUND * 3):
            plan.storage.record_heartbeat(held._trial_id)
            if stop.wait(0.3):
                return

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        (result,) = search.run(plan, runs.client())
    finally:
        stop.set()
        beating.join()
    assert states(study) == ["COMPLETE", "RUNNING"] and result.counts == {"COMPLETE": 1, "RUNNING": 1}


def test_waiting_for_a_trial_that_neither_beats_nor_goes_stale_gives_up_in_one_line(workdir):
    """A heartbeat in the future (the database's clock was set back): the wait says so, then ends with exit 1."""
    plan = search.plan(model="vae", n_trials=1, fixed=TINY)
    study = plan.studies[STUDY]
    stuck = study.ask(fixed_distributions=SPACES["basic"].distributions)
    plan.storage.record_heartbeat(stuck._trial_id)
    with sqlite3.connect(workdir / "optuna.db") as database:
        database.execute("UPDATE trial_heartbeats SET heartbeat = '2999-01-01 00:00:00'")
    env = subprocess_env(workdir) | {"MOONVAE_HEARTBEAT_SECONDS": "1", "MOONVAE_GRACE_SECONDS": "2"}
    command = [sys.executable, "-m", "moonvae", "tune", "--model", "vae", "--n-trials", "1"]
    command += ["--n-samples", "200", "--max-epochs", "12"]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    said = [line for line in lines if line.startswith(f"{STUDY}: waiting")]
    assert said and "for trial 0 (" in said[0] and "gives up after 4 s" in said[0], done.stderr[-3000:]
    assert lines[-1].startswith("moonvae: error: gave up after 4 s waiting for trial 0 ("), lines[-1]
    assert "neither moved nor went stale" in lines[-1]
    assert studies.load(plan.storage_url, STUDY).trials[0].state == TrialState.RUNNING  # left as it was
    client = runs.client()
    found = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert [run.info.status for run in found] == ["FAILED"]  # the study run, not left RUNNING


def test_a_trial_asked_when_the_trials_before_it_fill_the_study_gives_its_place_back(workdir):
    """Two processes count, then ask, at the same moment: the later trial ends FAIL at once, none is one too many."""
    plan = search.plan(model="vae", n_trials=1, fixed=TINY)
    study = plan.studies[STUDY]
    study.ask(fixed_distributions=SPACES["basic"].distributions)  # the other process's ask, a moment earlier
    with heartbeats.Heartbeats(plan.storage) as beats:
        site = asking.Worksite(
            space=SPACES["basic"], n_trials=1, storage=plan.storage, heartbeats=beats, n_jobs=1, trials_at_once=1,
            workers=2, target=plan.targets[0], study=study, mlflow_client=runs.client(), run_id="", deadline=None,
            worker={}, signalled=threading.Event(),
        )  # fmt: skip
        assert asking._ask(site) is None  # this process counted 0 of 1 before the other asked
        assert not beats.holds(study.trials[1]._trial_id)
    first, second = study.trials
    assert (first.state, second.state) == (TrialState.RUNNING, TrialState.FAIL)
    assert second.user_attrs["reason"] == asking.SURPLUS_REASON


def test_a_worker_in_the_middle_of_a_round_fails_a_dead_workers_trial_within_a_beat(workdir, short_heartbeats):
    """Its heartbeat thread looks for stale trials at every beat: a dead worker's trial is not left until the round
    that is training ends, but failed (and queued again) while it trains."""
    fixed = {"n_samples": 200, "max_epochs": 1000, "patience": 1000}  # a round of several seconds
    plan = search.plan(model="vae", n_trials=3, fixed=fixed, trials_at_once=2)
    study = plan.studies[STUDY]
    orphan = study.ask(fixed_distributions=SPACES["basic"].distributions)  # another worker's, alive until the
    stop = threading.Event()  # round has started, then dead

    def beat_until_the_round_started() -> None:
        while len(study.get_trials(deepcopy=False)) < 3 and not stop.wait(0.2):
            plan.storage.record_heartbeat(orphan._trial_id)

    beating = threading.Thread(target=beat_until_the_round_started)
    beating.start()
    try:
        search.run(plan, runs.client())
    finally:
        stop.set()
        beating.join()
    dead, *rest = study.get_trials(deepcopy=False)
    first_round = [trial for trial in rest if "failed_trial" not in trial.system_attrs]
    assert dead.state == TrialState.FAIL and len(first_round) == 2
    assert dead.datetime_complete < min(trial.datetime_complete for trial in first_round)
    assert [trial.params for trial in rest].count(dead.params) == 1  # run again, once


def test_a_retry_queued_after_its_place_was_taken_gives_it_back_and_a_trial_queued_by_hand_stays(workdir):
    """A worker failed a stale trial, another asked a new one in the freed place, then the retry was queued."""
    plan = search.plan(model="vae", n_trials=1, fixed=TINY)
    study = plan.studies[STUDY]
    search.run(plan, runs.client())  # the study is full
    retry = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 0})
    study.add_trial(retry)  # as RetryHeartbeatStaleTrialCallback queues one
    search.run(plan, runs.client())
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[1].user_attrs["reason"] == asking.SURPLUS_REASON
    study.enqueue_trial({"latent_dim": 2})  # by hand, for a later call with more trials
    search.run(plan, runs.client())
    assert [trial.state for trial in study.trials][2:] == [TrialState.WAITING]


def test_a_worker_looks_for_stale_trials_more_often_than_it_beats(workdir, monkeypatch):
    """With the default 30 s heartbeat a dead worker's trial would wait up to 30 s past its grace to be noticed."""
    monkeypatch.setattr(heartbeats, "HEARTBEAT_SECONDS", 30)
    monkeypatch.setattr(heartbeats, "WATCH_SECONDS", 1)
    plan = search.plan(model="vae", n_trials=1, fixed=TINY)
    looks: list[float] = []
    with heartbeats.Heartbeats(plan.storage, watch=lambda: looks.append(time.monotonic())):
        threading.Event().wait(2.5)
    assert len(looks) >= 2  # the first heartbeat is 30 s away
