"""A study's workers on a Ray cluster: a throwaway head, PostgreSQL and `mlflow server` (tests/services.py).

What docs/distributed.md's "On a Ray cluster" section promises, on one machine: `moonvae tune
--ray-address ... --workers 2` sends the code and the settings to the cluster and runs
the study there under its one study run; a worker process killed mid-trial is retried
by Ray while its trial is failed by heartbeat and replaced; SIGTERM on the driver
stops the workers and leaves nothing RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import subprocess_env
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from services import RAY_NO_AUTH, RayHead

from moonvae.tuning.studies import WORKER_ATTR

pytestmark = [pytest.mark.slow, pytest.mark.ray]
# The driver joins the cluster at the head's address. Through the client server (ray://, as from
# another machine) each call first waits for a server process of its own, which on a busy machine
# took longer than the client's 30 s timeout; both addresses lead to the same executor code.

TUNE_SECONDS = 900
TASK = "study_worker"  # its process shows as ray::study_worker; ray::IDLE and the agents are not tasks
# one trial at a time per worker, so a killed worker process takes one trial with it (a round takes all of its own)
TRIALS = ["--model", "vae", "--max-epochs", "15", "--n-samples", "400", "--workers", "2", "--trials-at-once", "1"]
SHORT_HEARTBEAT = {"MOONVAE_HEARTBEAT_SECONDS": "1", "MOONVAE_GRACE_SECONDS": "10"}  # a dead worker's trial: 10 s


def start_tune(folder: Path, tracking_uri: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """`moonvae tune ARGS` from its own folder, as on a laptop driving the cluster; output in folder/tune.log."""
    folder.mkdir()
    env = subprocess_env(folder) | {"MLFLOW_TRACKING_URI": tracking_uri} | SHORT_HEARTBEAT | RAY_NO_AUTH
    log = folder / "tune.log"
    with log.open("w") as output:
        command = [sys.executable, "-m", "moonvae", "tune", *args]
        tune = subprocess.Popen(command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT)
    return tune, log


def training(storage: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # not created yet
        return []
    return [trial for trial in study.trials if trial.state == TrialState.RUNNING and WORKER_ATTR in trial.user_attrs]


def wait_for_training(
    cluster: RayHead, storage: str, study_name: str, count: int, tune: subprocess.Popen, log: Path
) -> list:
    """Until `count` trials of the study train in the cluster's tasks; returns them."""
    deadline = time.monotonic() + TUNE_SECONDS
    while True:
        assert tune.poll() is None, log.read_text()[-3000:]
        tasks = cluster.tasks(TASK)
        running = [trial for trial in training(storage, study_name) if trial.user_attrs[WORKER_ATTR]["pid"] in tasks]
        if len(running) >= count:
            return running
        if time.monotonic() > deadline:
            pytest.fail(f"no {count} trials training in Ray tasks:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def all_runs(client: MlflowClient) -> list:
    return client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])


def test_a_study_on_ray_survives_a_killed_worker(tmp_path, ray_cluster, postgres_url, tracking_server):
    options = ["--n-trials", "8", "--storage", postgres_url, "--study-name", "killed"]
    tune, log = start_tune(tmp_path / "tune", tracking_server, *TRIALS, *options, "--ray-address", ray_cluster.address)
    (victim, *_) = wait_for_training(ray_cluster, postgres_url, "killed", 1, tune, log)
    os.kill(victim.user_attrs[WORKER_ATTR]["pid"], signal.SIGKILL)  # mid-trial
    tune.wait(timeout=TUNE_SECONDS)
    # Ray retried the killed task: a task lost for good would have ended the call with exit code 1
    assert tune.returncode == 0, log.read_text()[-3000:]

    study = optuna.load_study(study_name="killed", storage=postgres_url)
    states = [trial.state for trial in study.trials]
    assert sum(state in (TrialState.COMPLETE, TrialState.PRUNED) for state in states) == 8, states
    (failed,) = [trial for trial in study.trials if trial.state == TrialState.FAIL]
    assert failed.number == victim.number and TrialState.RUNNING not in states
    client = MlflowClient(tracking_server)
    runs = all_runs(client)
    (study_run,) = [run for run in runs if run.data.tags.get("moonvae.kind") == "study"]
    assert study_run.info.run_id == study.user_attrs["mlflow_run_id"] and study_run.info.status == "FINISHED"
    trial_runs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == study_run.info.run_id]
    assert len(runs) == 1 + len(trial_runs) == 1 + len(study.trials)  # each trial one run, nested, nothing else
    assert {run.info.run_id for run in trial_runs} == {trial.user_attrs["mlflow_run_id"] for trial in study.trials}
    assert "RUNNING" not in {run.info.status for run in runs}
    assert client.get_run(failed.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    ran = {trial.user_attrs[WORKER_ATTR]["pid"] for trial in study.trials}
    assert len(ran) >= 2 and tune.pid not in ran  # trials ran in Ray's worker processes, not in the driver
    champion = client.get_model_version_by_alias("moonvae-vae", "champion")
    assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"]


def test_sigterm_on_the_driver_stops_the_ray_workers_and_leaves_nothing_running(
    tmp_path, ray_cluster, postgres_url, tracking_server
):
    long_trials = ["--max-epochs", "5000", "--patience", "5000", "--pruner", "none"]  # still training when stopped
    options = ["--n-trials", "8", "--storage", postgres_url, "--study-name", "stopped", *long_trials]
    tune, log = start_tune(tmp_path / "tune", tracking_server, *TRIALS, *options, "--ray-address", ray_cluster.address)
    wait_for_training(ray_cluster, postgres_url, "stopped", 2, tune, log)
    tune.send_signal(signal.SIGTERM)
    tune.wait(timeout=TUNE_SECONDS)
    assert tune.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]

    study = optuna.load_study(study_name="stopped", storage=postgres_url)
    assert sorted(trial.state.name for trial in study.trials) == ["FAIL", "FAIL"]
    client = MlflowClient(tracking_server)
    runs = all_runs(client)
    assert {(run.info.status, run.data.tags["moonvae.status_reason"]) for run in runs} == {("KILLED", "interrupted")}
    assert len(runs) == 3  # the study run and the two trials'
    assert ray_cluster.tasks(TASK) == []  # the tasks ended; their processes are idle or gone
