"""Several `moonvae tune` processes on one PostgreSQL-backed study, tracking through a real `mlflow server`.

What the README's "Many machines" section promises, on one machine: a throwaway
PostgreSQL cluster (Debian's `postgresql` package) holds the Optuna study, an
`mlflow server` on sqlite proxies the artifacts, and two workers started at the same
instant on a brand-new database and study share it until it holds `n_trials`.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from conftest import free_port, running_server, subprocess_env
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

READY_SECONDS = 120  # for the throwaway PostgreSQL cluster to start; generous for a busy CI runner
WORKER_SECONDS = 900
STUDY = "moonvae-vae-basic"
TRIALS = ["--model", "vae", "--max-epochs", "15", "--n-samples", "400"]


def unavailable(reason: str) -> None:
    """Skip where PostgreSQL is simply not installed; on CI (env CI set) that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries Debian installed, else those on PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parents[1].name))
    found = debian[-1] if debian else shutil.which("pg_ctl")
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway database on a throwaway cluster on a free loopback port; dropped and stopped afterwards.

    The cluster lives in a temporary folder, so the machine's own clusters are left alone.
    PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
    """
    import psycopg

    binaries = postgres_bin()
    if binaries is None or not (binaries / "initdb").exists():
        unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no postgres user to run PostgreSQL as")
    as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
    folder = Path(tempfile.mkdtemp(prefix="moonvae-postgres-"))
    if owner:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data, log, port = folder / "data", folder / "postgres.log", free_port()

    def pg(*args: str) -> None:
        done = subprocess.run([str(binaries / args[0]), *args[1:]], capture_output=True, text=True, **as_owner)
        if done.returncode != 0:
            details = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()[-2000:]}\n{details}")

    pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "--encoding=UTF8")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        pg("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(READY_SECONDS), "start")

        def sql(statement: str) -> None:  # CREATE and DROP DATABASE refuse to run inside a transaction
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres") as connection:
                connection.autocommit = True
                connection.execute(statement)

        sql("CREATE DATABASE moonvae_study")
        yield f"postgresql://postgres@127.0.0.1:{port}/moonvae_study"  # as users type it: psycopg 3
        sql("DROP DATABASE moonvae_study WITH (FORCE)")
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on sqlite with proxied artifacts (no --default-artifact-root), on a free loopback port."""
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(command, folder, port, "/health") as url:
        yield url


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
