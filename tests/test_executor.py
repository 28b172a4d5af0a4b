"""The executor: worker processes restarted when killed, stopped on SIGTERM or a worker's error; `tune` on them.

The first tests run toy workers (tests/toy_workers.py: spawned processes import it, and
nothing heavy); the slow ones run `tune` itself, here and as a `python -m moonvae` subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import moonvae, subprocess_env
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from toy_workers import toy_work

from moonvae import metrics
from moonvae.config import TRIALS_AT_ONCE
from moonvae.tracking import runs
from moonvae.tuning import search, signals, studies
from moonvae.tuning.processes import Local

STOP_WAIT_SECONDS = 120  # for a signalled `tune` to end its trials and exit; generous for a busy CI runner


class Watcher:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.polls = 0

    def poll(self) -> None:
        self.polls += 1

    def say(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def fresh_signals(monkeypatch):
    """The executor's stop flag as a new process has it."""
    monkeypatch.setattr(signals, "_stop", threading.Event())
    monkeypatch.setattr(signals, "_stopped_by", None)


def started(folder: Path, number: int) -> list[Path]:
    return sorted(folder.glob(f"started-{number}-*"))


def test_worker_processes_get_the_environment_and_a_killed_one_is_restarted(tmp_path, fresh_signals):
    watcher = Watcher()
    Local().run(toy_work, {"folder": str(tmp_path), "die_once": 0}, 2, 1, {"MOONVAE_TOY": "passed"}, watcher)
    assert (tmp_path / "done-0").exists() and (tmp_path / "done-1").exists()
    assert len(started(tmp_path, 0)) == 2 and len(started(tmp_path, 1)) == 1  # worker 0 ran twice
    assert {path.read_text() for path in tmp_path.glob("started-*")} == {"passed"}
    assert {path.name.split("-")[2] for path in tmp_path.glob("started-*")}.isdisjoint({str(os.getpid())})
    assert any("worker 0 died" in line and "restarting" in line for line in watcher.lines)
    assert watcher.polls >= 1


def test_a_workers_error_stops_the_others_and_is_raised(tmp_path, fresh_signals):
    with pytest.raises(ValueError, match="worker 1 broke"):
        Local().run(toy_work, {"folder": str(tmp_path), "fail": 1, "seconds": 600}, 2, 1, {}, Watcher())
    assert (tmp_path / "stopped-0").exists() and not (tmp_path / "done-0").exists()


def test_sigterm_stops_every_worker_process_then_raises_keyboard_interrupt(tmp_path, fresh_signals):
    with signals.stop_on_signals():
        threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(KeyboardInterrupt):
            Local().run(toy_work, {"folder": str(tmp_path), "seconds": 600}, 2, 1, {}, Watcher())
    assert (tmp_path / "stopped-0").exists() and (tmp_path / "stopped-1").exists()
    assert signals.stopped_by() == signal.SIGTERM


def test_an_unreachable_ray_cluster_is_one_line_and_creates_nothing(workdir):
    pytest.importorskip("ray")
    done = moonvae(workdir, "tune", "--model", "vae", "--workers", "2", "--ray-address", "127.0.0.1:1")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("moonvae: error: cannot reach the Ray cluster at 127.0.0.1:1"), done.stderr
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()


@pytest.mark.slow
def test_worker_processes_reproduce_one_workers_random_study(workdir):
    client = runs.client()
    fixed = {"n_samples": 200, "max_epochs": 12}
    (two,) = search.run(search.plan("vae", "probabilistic", 4, study_base="two", workers=2, fixed=fixed), client)
    (one,) = search.run(search.plan("vae", "probabilistic", 4, study_base="one", fixed=fixed), client)
    storage = studies.default_storage()
    trials = {name: optuna.load_study(study_name=name, storage=storage).trials for name in ("one", "two")}
    assert [(t.params, t.value) for t in trials["two"]] == [(t.params, t.value) for t in trials["one"]]
    pids = {trial.user_attrs["moonvae.worker"]["pid"] for trial in trials["two"]}
    assert len(pids) == 2 and os.getpid() not in pids  # two processes, not this one
    found = client.search_runs([client.get_experiment_by_name("moonvae").experiment_id])
    nested = [run for run in found if run.data.tags.get("mlflow.parentRunId") == two.run_id]
    assert {run.info.run_id for run in nested} == {trial.user_attrs["mlflow_run_id"] for trial in trials["two"]}
    assert {run.info.status for run in nested} == {"FINISHED"}
    steps = [point.step for point in client.get_metric_history(two.run_id, studies.OBJECTIVE)]
    assert sorted(steps) == [0, 1, 2, 3]  # one writer: each step once


def start_tune(folder: Path, *args: str) -> subprocess.Popen:
    """`python -m moonvae tune ARGS` in `folder`, long trials, its output in folder/tune.log."""
    trials = ["--model", "vae", "--n-trials", "50", "--n-samples", "400", "--max-epochs", "5000", "--patience", "5000"]
    with (folder / "tune.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "moonvae", "tune", *trials, "--pruner", "none", *args],
            cwd=folder,
            env=subprocess_env(folder),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def training(storage: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that are training now (their runs open); none while `tune` is still creating it."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception:  # no study yet, or its tables half made
        return []
    return [t for t in study.trials if t.state == TrialState.RUNNING and studies.WORKER_ATTR in t.user_attrs]


def wait_for_training(storage: str, trials: int, tune: subprocess.Popen, log: Path) -> set[int]:
    """Until `trials` trials train; their numbers."""
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while len(running := training(storage, "moonvae-vae-basic")) < trials:
        assert tune.poll() is None, log.read_text()[-3000:]
        if time.monotonic() > deadline:
            pytest.fail(f"no {trials} trials training after {STOP_WAIT_SECONDS} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return {trial.number for trial in running}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_ends_a_tune_like_ctrl_c(workdir, workers):
    """What Docker, Kubernetes, systemd and `timeout` send: runs end KILLED, trials FAIL, exit 128 + 15."""
    tune = start_tune(workdir, "--workers", str(workers))
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    # each worker trains a round of TRIALS_AT_ONCE trials (50 places: a full round each), for 5000 epochs
    running = wait_for_training(storage, workers * TRIALS_AT_ONCE, tune, workdir / "tune.log")
    tune.send_signal(signal.SIGTERM)
    tune.wait(timeout=STOP_WAIT_SECONDS)
    output = (workdir / "tune.log").read_text()
    assert tune.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert output.strip().endswith("moonvae: terminated")
    study = studies.load(storage, "moonvae-vae-basic")
    failed = [trial for trial in study.trials if trial.state == TrialState.FAIL]
    assert {trial.number for trial in failed} == running  # every trial of the stopped rounds, no other
    assert TrialState.RUNNING not in {trial.state for trial in study.trials}
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    found = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert "RUNNING" not in {run.info.status for run in found}
    for trial in failed:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert (run.info.status, run.data.tags["moonvae.status_reason"]) == ("KILLED", "interrupted")
        # nothing buffered lost: every per-epoch metric holds the same epochs, in order, none missing
        histories = [client.get_metric_history(run.info.run_id, key) for key in metrics.names("epoch", False)]
        steps = {tuple(point.step for point in history) for history in histories}
        assert len(steps) == 1 and next(iter(steps)) == tuple(range(len(histories[0]))), (trial.number, steps)
    (study_run,) = [run for run in found if run.data.tags["moonvae.kind"] == "study"]
    assert study_run.info.status == "KILLED"
