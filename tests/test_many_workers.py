"""Several `moonvae tune` processes on one PostgreSQL-backed study, tracking through a real `mlflow server`.

What docs/distributed.md's "Many machines" section promises, on one machine: a throwaway
PostgreSQL cluster (Debian's `postgresql` package) holds the Optuna study, an
`mlflow server` on sqlite proxies the artifacts (both from tests/services.py), and two
workers started at the same instant on a brand-new database and study share it until
it holds `n_trials`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from conftest import subprocess_env
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

WORKER_SECONDS = 900
STUDY = "moonvae-vae-basic"
# one trial at a time: two calls do not know of each other, and a round of 8 would take the whole study
TRIALS = ["--model", "vae", "--max-epochs", "15", "--n-samples", "400", "--trials-at-once", "1"]


def start_worker(folder: Path, tracking_uri: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """`moonvae tune ...` in its own folder, as on its own machine; its output goes to a log file."""
    folder.mkdir()
    env = subprocess_env(folder) | {"MLFLOW_TRACKING_URI": tracking_uri}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    log = folder / "tune.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moonvae", "tune", *args],
            cwd=folder,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return process, log


def finish(process: subprocess.Popen, log: Path) -> None:
    try:
        process.wait(timeout=WORKER_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    assert process.returncode == 0, log.read_text()[-3000:]


def test_two_workers_share_a_postgres_study_through_a_tracking_server(
    tmp_path, monkeypatch, postgres_url, tracking_server
):
    storage = ["--storage", postgres_url]
    workers = [  # at the same instant, on a brand-new database: no "create the study first" rule
        start_worker(tmp_path / f"worker-{i}", tracking_server, *TRIALS, "--n-trials", "8", *storage) for i in (1, 2)
    ]
    for worker in workers:
        finish(*worker)

    study = optuna.load_study(study_name=STUDY, storage=postgres_url)
    states = [trial.state for trial in study.trials]
    assert sum(state in (TrialState.COMPLETE, TrialState.PRUNED) for state in states) == 8, states
    assert TrialState.RUNNING not in states
    client = MlflowClient(tracking_server)
    runs = client.search_runs([exp.experiment_id for exp in client.search_experiments()])
    assert {run.info.status for run in runs} <= {"FINISHED", "KILLED"}
    (study_run,) = [run for run in runs if run.data.tags.get("moonvae.kind") == "study"]
    trial_runs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == study_run.info.run_id]
    assert len(runs) == 1 + len(trial_runs)  # the study run and its trials, nothing else
    assert sorted(run.info.run_id for run in trial_runs) == sorted(t.user_attrs["mlflow_run_id"] for t in study.trials)
    assert study_run.info.run_id == study.user_attrs["mlflow_run_id"]
    ran = [set(map(int, re.findall(rf"{STUDY} trial-(\d+)", log.read_text()))) for _, log in workers]
    assert all(ran) and not ran[0] & ran[1]  # both workers ran trials, never the same one
    assert ran[0] | ran[1] == set(range(len(study.trials)))
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:") for run in trial_runs)  # proxied by the server
    assert not any((tmp_path / name / "mlruns").exists() for name in ("worker-1", "worker-2"))
    assert optuna.get_all_study_names(storage=postgres_url) == [STUDY]

    versions = client.search_model_versions("name='moonvae-vae'")
    assert len({version.source for version in versions}) == len(versions)  # no model registered twice
    champion = client.get_model_version_by_alias("moonvae-vae", "champion")
    assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    model = mlflow.pyfunc.load_model("models:/moonvae-vae@champion")
    samples = model.predict(pd.DataFrame({"label": [0, 1]}))
    assert list(samples.columns) == ["x1", "x2", "label"] and samples.notna().all().all()
