"""The fault suite: a study outlives a killed worker, a stopped tracking server and a restarted database.

Real services on loopback (tests/services.py): a PostgreSQL cluster holds the studies,
an `mlflow server` the runs. Trials are small (200 points, 10 epochs, rounds of K = 8)
and heartbeats short (1 s, grace 5 s), so each fault costs seconds. Every test asserts
the exact count of finished trials, the whole per-epoch history of every finished
trial's run, and that no trial or run is left RUNNING; each prints a `FAULT` line (the
fault, how long recovery took, what it cost), which `pytest -s` shows.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import subprocess_env
from fault_workers import EPOCHS, FIXED, INSTANTS, N_TRIALS, K
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from services import RAY_NO_AUTH

from moonvae import metrics
from moonvae.tuning import asking, studies

pytestmark = pytest.mark.slow

SHORT = {"MOONVAE_HEARTBEAT_SECONDS": "1", "MOONVAE_GRACE_SECONDS": "5"}
OUTAGE_SECONDS = 30  # the tracking server's
TUNE_SECONDS = 900  # the longest a faulted `tune` may take on a busy CI runner


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `mlflow server` for the killed-worker tests (each study is told apart by its name)."""
    from services import tracking_server

    with tracking_server(tmp_path_factory.mktemp("faults") / "server") as url:
        yield url


def run_killed_study(
    name: str, instant: str, folder: Path, storage: str, tracking_uri: str, *ray_address: str
) -> optuna.Study:
    """tests/fault_workers.py: two workers, K trials a round each, whose worker 0 kills itself at `instant`."""
    (folder / "marks").mkdir()
    env = subprocess_env(folder) | {"MLFLOW_TRACKING_URI": tracking_uri} | SHORT | RAY_NO_AUTH
    command = [sys.executable, str(Path(__file__).parent / "fault_workers.py"), instant, str(folder / "marks")]
    command += [storage, name, *ray_address]
    with (folder / "tune.log").open("w") as log:
        done = subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=TUNE_SECONDS)
    assert done.returncode == 0, (folder / "tune.log").read_text()[-3000:]
    assert (folder / "marks" / "killed").exists()  # the fault happened
    return optuna.load_study(study_name=name, storage=storage)


def check(study: optuna.Study, client: MlflowClient) -> list[optuna.trial.FrozenTrial]:
    """Exactly N_TRIALS finished, each run FINISHED with every epoch's metrics, nothing RUNNING; the stale trials.

    A trial that failed for a reason (one too many, asked by two workers at once) is not a stale one.
    """
    trials = study.get_trials(deepcopy=False)
    finished = [trial for trial in trials if trial.state in studies.DONE_STATES]
    assert len(finished) == N_TRIALS, sorted(trial.state.name for trial in trials)
    assert {trial.state for trial in trials} <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    for trial in finished:
        run_id = trial.user_attrs["mlflow_run_id"]
        assert client.get_run(run_id).info.status == "FINISHED"
        for key in metrics.names("epoch", calibrated=False):  # the suite trains likelihood mse
            assert len(client.get_metric_history(run_id, key)) == EPOCHS, (trial.number, key)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    found = client.search_runs(experiments, f"tags.`moonvae.study` = '{study.study_name}'")
    assert len(found) == 1 + sum("mlflow_run_id" in trial.user_attrs for trial in trials)  # study run + trials'
    assert "RUNNING" not in {run.info.status for run in found}
    return [trial for trial in trials if trial.state == TrialState.FAIL and "reason" not in trial.user_attrs]


def seconds_after(moment: float, trials: list[optuna.trial.FrozenTrial]) -> float:
    return max(trial.datetime_complete for trial in trials).timestamp() - moment


def report_kill(label: str, study: optuna.Study, failed: list[optuna.trial.FrozenTrial], folder: Path) -> None:
    """The FAULT line: when the dead worker's trials were failed and the study finished, after the kill."""
    killed = float((folder / "killed").read_text())
    queued = [trial for trial in study.trials if trial.system_attrs.get("failed_trial") is not None]
    assert sorted(trial.system_attrs["failed_trial"] for trial in queued) == sorted(t.number for t in failed)
    # each run again, to the end, or its place taken by a trial asked between its failure and its queuing
    surplus = [trial for trial in queued if trial.user_attrs.get("reason") == asking.SURPLUS_REASON]
    again = [trial for trial in queued if trial not in surplus]
    assert all(trial.state in studies.DONE_STATES for trial in again)
    assert again  # the dead worker's round was not all replaced by other trials
    in_hand = (max(t.datetime_complete for t in again) - min(t.datetime_start for t in again)).total_seconds()
    print(
        f"\nFAULT {label}: {len(failed)} trials of the dead worker failed {seconds_after(killed, failed):.1f} s "
        f"after the kill, {len(again)} run again (in {in_hand:.1f} s), {len(surplus)} whose place another took; "
        f"study finished {seconds_after(killed, study.trials):.1f} s after it (goal: grace "
        f"{SHORT['MOONVAE_GRACE_SECONDS']} s + {in_hand:.1f} s); 0 finished trials lost"
    )


@pytest.mark.parametrize("instant", INSTANTS)
def test_a_worker_process_killed_at_any_instant_leaves_nothing_that_blocks_the_study(
    workdir, postgres, server, instant
):
    name = f"local-{instant.replace(' ', '-')}"
    storage = postgres.database(name.replace("-", "_"))
    study = run_killed_study(name, instant, workdir, storage, server)
    failed = check(study, MlflowClient(server))
    assert failed  # the victim's round, failed by heartbeat
    report_kill(f"worker process SIGKILLed ({instant}, K={K})", study, failed, workdir / "marks")


@pytest.mark.ray
@pytest.mark.parametrize("instant", INSTANTS)
def test_a_ray_worker_killed_at_any_instant_leaves_nothing_that_blocks_the_study(
    workdir, postgres, server, ray_cluster, instant
):
    name = f"ray-{instant.replace(' ', '-')}"
    storage = postgres.database(name.replace("-", "_"))
    study = run_killed_study(name, instant, workdir, storage, server, ray_cluster.address)
    failed = check(study, MlflowClient(server))
    pids = {trial.user_attrs["moonvae.worker"]["pid"] for trial in study.trials if "moonvae.worker" in trial.user_attrs}
    assert failed and ray_cluster.tasks("study_worker") == [] and len(pids) >= 2  # Ray's processes, done now
    report_kill(f"Ray task's process SIGKILLed ({instant}, K={K})", study, failed, workdir / "marks")


def start_tune(folder: Path, tracking_uri: str, storage: str) -> tuple[subprocess.Popen, Path]:
    """`moonvae tune` as a user starts it: one worker, rounds of K, output in folder/tune.log.

    Its study is named after the test's folder: several tests share a tracking server.
    """
    env = subprocess_env(folder) | {"MLFLOW_TRACKING_URI": tracking_uri} | SHORT
    command = [sys.executable, "-m", "moonvae", "tune", "--model", "vae", "--space", "probabilistic"]
    command += ["--n-trials", str(N_TRIALS), "--trials-at-once", str(K), "--storage", storage]
    command += ["--study-name", folder.name]
    command += [f"--{key.replace('_', '-')}={value}" for key, value in FIXED.items()]
    log = folder / "tune.log"
    with log.open("w") as output:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT), log


def wait_until_training(storage: str, name: str, tune: subprocess.Popen, log: Path) -> None:
    """Until a round's trials have their runs (they train and log epochs now)."""
    deadline = time.monotonic() + TUNE_SECONDS
    while True:
        assert tune.poll() is None, log.read_text()[-3000:]
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except KeyError:
            trials = []
        if sum(t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials) >= K:
            return
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def finish(tune: subprocess.Popen, log: Path) -> None:
    try:
        tune.wait(timeout=TUNE_SECONDS)
    finally:
        if tune.poll() is None:
            tune.send_signal(signal.SIGTERM)
            tune.wait()
    assert tune.returncode == 0, log.read_text()[-3000:]
    assert "View run" not in log.read_text()  # MLflow's line per ended run, through the progress bar


def test_the_tracking_server_stopped_for_30_s_mid_study(workdir, postgres):
    from services import tracking_server

    storage = postgres.database("tracking_outage")
    folder, port = workdir / "server", None
    with tracking_server(folder) as url:
        port = int(url.rpartition(":")[2])
        tune, log = start_tune(workdir, url, storage)
        wait_until_training(storage, workdir.name, tune, log)
    stopped = time.time()  # the server's process group has ended
    time.sleep(OUTAGE_SECONDS)
    with tracking_server(folder, port) as url:
        back = time.time()
        finish(tune, log)
        study = optuna.load_study(study_name=workdir.name, storage=storage)
        failed = check(study, MlflowClient(url))
    print(
        f"\nFAULT tracking server stopped {back - stopped:.0f} s: study finished "
        f"{seconds_after(back, study.trials):.1f} s after it was back; {len(failed)} trials failed and run again"
    )


def test_postgresql_restarted_mid_study(workdir, postgres, server):
    storage = postgres.database("database_restart")
    tune, log = start_tune(workdir, server, storage)
    wait_until_training(storage, workdir.name, tune, log)
    started = time.time()
    postgres.restart()
    back = time.time()
    finish(tune, log)
    study = optuna.load_study(study_name=workdir.name, storage=storage)
    failed = check(study, MlflowClient(server))
    print(
        f"\nFAULT PostgreSQL restarted (pg_ctl restart -m fast, {back - started:.1f} s): study finished "
        f"{seconds_after(back, study.trials):.1f} s after; {len(failed)} trials failed and run again"
    )


def test_postgresql_gone_for_good_ends_the_call_in_one_line_and_no_run_running(workdir, postgres, server):
    """Longer than a worker waits for its storage (the grace period): the study cannot finish, exit 1."""
    storage = postgres.database("database_gone")
    tune, log = start_tune(workdir, server, storage)
    wait_until_training(storage, workdir.name, tune, log)
    with postgres.stopped():
        tune.wait(timeout=TUNE_SECONDS)
    lines = log.read_text().strip().splitlines()
    assert tune.returncode == 1, lines[-20:]
    assert lines[-1].startswith("moonvae: error: lost the study's storage postgresql://"), lines[-1]
    client = MlflowClient(server)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    found = client.search_runs(experiments, f"tags.`moonvae.study` = '{workdir.name}'")
    assert found and "RUNNING" not in {run.info.status for run in found}
