"""The MLflow layer on a real sqlite store: batched metrics, params already present, how runs end, registering."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

import moonvae
from moonvae.serving import loading
from moonvae.tracking import lineage, names, registry, runs
from moonvae.tracking.experiment import run_training


@pytest.fixture
def client(workdir):
    return runs.client()


def steps(client, run_id, key):
    return [point.step for point in client.get_metric_history(run_id, key)]


def test_metric_buffer_sends_nothing_until_flushed_then_everything(client):
    run_id = client.create_run("0").info.run_id
    buffer = runs.MetricBuffer(client, run_id, flush_seconds=3600)
    for step in range(5):
        buffer.add({"a": step, "b": -step}, step=step)
    assert steps(client, run_id, "a") == []  # batched: no call per point
    buffer.close()
    assert sorted(steps(client, run_id, "a")) == list(range(5)) and len(steps(client, run_id, "b")) == 5


def test_metric_buffer_flushes_a_full_batch_and_on_a_timer(client, monkeypatch):
    run_id = client.create_run("0").info.run_id
    buffer = runs.MetricBuffer(client, run_id, flush_seconds=3600)
    buffer.add({f"m{i}": i for i in range(runs.MAX_BATCH)})
    assert len(client.get_run(run_id).data.metrics) == runs.MAX_BATCH  # a full batch goes at once
    timed = runs.MetricBuffer(client, run_id, flush_seconds=0.0)
    timed.add({"late": 1.0}, step=7)
    assert steps(client, run_id, "late") == [7]  # the timer had run out: sent without close()


def test_log_params_keeps_values_already_logged_in_the_users_spelling(client):
    run_id = client.create_run("0").info.run_id
    client.log_param(run_id, "lr", "1e-3")  # what `mlflow run -P lr=1e-3` logs before the program starts
    runs.log_params(client, run_id, {"lr": 0.001, "beta": 1.0})
    assert client.get_run(run_id).data.params == {"lr": "1e-3", "beta": "1.0"}


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (KeyboardInterrupt(), "KILLED", "interrupted"),
        (StopIteration("pruned at epoch 9"), "KILLED", "pruned at epoch 9"),
        (OSError("disk full"), "FAILED", "OSError: disk full"),
    ],
)
def test_a_run_always_ends_and_says_why(client, error, status, reason):
    with pytest.raises(type(error)), runs.run(client, "r", killed_by=(StopIteration,)) as run_id:
        raise error
    run = client.get_run(run_id)
    assert run.info.status == status and run.data.tags[names.STATUS_REASON_TAG] == reason


def test_a_resumed_run_runs_again_under_its_new_name_without_its_old_reason(client):
    with pytest.raises(OSError), runs.run(client, "first") as run_id:
        raise OSError("lost")
    with runs.run(client, "second", resume_run_id=run_id) as resumed:
        assert resumed == run_id and client.get_run(run_id).info.status == "RUNNING"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "second"
    assert names.STATUS_REASON_TAG not in run.data.tags


def test_end_if_running_ends_only_a_running_run(client):
    running = client.create_run("0").info.run_id
    assert runs.end_if_running(client, running, runs.FAILED, "its worker stopped")
    assert client.get_run(running).info.status == "FAILED"
    assert not runs.end_if_running(client, running, runs.KILLED, "again")
    assert client.get_run(running).data.tags[names.STATUS_REASON_TAG] == "its worker stopped"


def test_experiment_from_the_environment(client, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere")
    experiment = runs.experiment_id(client)
    assert client.get_experiment(experiment).name == "elsewhere"
    assert runs.experiment_id(client) == experiment  # found, not created twice


def test_model_uri_turns_a_run_id_into_its_model():
    run_id = "0123456789abcdef" * 2
    assert loading.model_uri(run_id) == f"runs:/{run_id}/model"
    assert loading.model_uri("models:/moonvae-vae@champion") == "models:/moonvae-vae@champion"


def test_register_once_registers_a_model_once_and_points_the_alias(client, small_config):
    with runs.run(client, "train") as run_id:
        outcome = run_training(small_config, client, run_id)
    model_id = outcome.model_info.model_id
    first = registry.register_once(client, model_id, "m", "best")
    again = registry.register_once(client, model_id, "m", "other")
    assert first == again == "1"
    assert [str(v.version) for v in client.search_model_versions("name='m'")] == ["1"]
    assert {alias: str(client.get_model_version_by_alias("m", alias).version) for alias in ("best", "other")} == {
        "best": "1",
        "other": "1",
    }


def test_every_run_records_the_code_that_ran(client, tmp_path):
    """The commit of the checkout the package came from, whether it was dirty, and the version: however started.

    Started from a console script in another folder, MLflow itself finds no repository (it looks around
    sys.argv[0]); the lineage is read around the package.
    """
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    code = "from moonvae.tracking import runs\nclient = runs.client()\nprint(runs.start_run(client, 'lineage'))\n"
    env = {**os.environ, "MLFLOW_TRACKING_URI": runs.tracking_uri(), "PYTHONPATH": str(ROOT)}
    env.pop(lineage.LINEAGE_ENV, None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tags = client.get_run(done.stdout.strip().splitlines()[-1]).data.tags
    assert tags[names.VERSION_TAG] == moonvae.__version__
    if head.returncode == 0:  # a checkout (CI clones one): the commit and whether it was dirty
        assert tags[lineage.GIT_COMMIT_TAG] == head.stdout.strip()
        assert tags[names.GIT_DIRTY_TAG] in ("true", "false")


def test_a_worker_outside_any_checkout_records_its_drivers_lineage(client, tmp_path):
    driver = {names.VERSION_TAG: "9.9.9", lineage.GIT_COMMIT_TAG: "f" * 40, names.GIT_DIRTY_TAG: "false"}
    code = "from moonvae.tracking import runs\nprint(runs.start_run(runs.client(), 'worker'))\n"
    env = {**os.environ, "MLFLOW_TRACKING_URI": runs.tracking_uri(), "PYTHONPATH": str(ROOT)}
    env[lineage.LINEAGE_ENV] = json.dumps(driver)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tags = client.get_run(done.stdout.strip().splitlines()[-1]).data.tags
    assert {key: tags[key] for key in driver} == driver
