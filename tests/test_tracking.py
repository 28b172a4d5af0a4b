"""The MLflow layer on a real sqlite store: batched metrics, params already present, how runs end, registering."""

import pytest

from moonvae import tracking
from moonvae.experiment import run_training


@pytest.fixture
def client(workdir):
    return tracking.client()


def steps(client, run_id, key):
    return [point.step for point in client.get_metric_history(run_id, key)]


def test_metric_buffer_sends_nothing_until_flushed_then_everything(client):
    run_id = client.create_run("0").info.run_id
    buffer = tracking.MetricBuffer(client, run_id, flush_seconds=3600)
    for step in range(5):
        buffer.add({"a": step, "b": -step}, step=step)
    assert steps(client, run_id, "a") == []  # batched: no call per point
    buffer.close()
    assert sorted(steps(client, run_id, "a")) == list(range(5)) and len(steps(client, run_id, "b")) == 5


def test_metric_buffer_flushes_a_full_batch_and_on_a_timer(client, monkeypatch):
    run_id = client.create_run("0").info.run_id
    buffer = tracking.MetricBuffer(client, run_id, flush_seconds=3600)
    buffer.add({f"m{i}": i for i in range(tracking.MAX_BATCH)})
    assert len(client.get_run(run_id).data.metrics) == tracking.MAX_BATCH  # a full batch goes at once
    timed = tracking.MetricBuffer(client, run_id, flush_seconds=0.0)
    timed.add({"late": 1.0}, step=7)
    assert steps(client, run_id, "late") == [7]  # the timer had run out: sent without close()


def test_log_params_keeps_values_already_logged_in_the_users_spelling(client):
    run_id = client.create_run("0").info.run_id
    client.log_param(run_id, "lr", "1e-3")  # what `mlflow run -P lr=1e-3` logs before the program starts
    tracking.log_params(client, run_id, {"lr": 0.001, "beta": 1.0})
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
    with pytest.raises(type(error)), tracking.run(client, "r", killed_by=(StopIteration,)) as run_id:
        raise error
    run = client.get_run(run_id)
    assert run.info.status == status and run.data.tags[tracking.STATUS_REASON_TAG] == reason


def test_a_resumed_run_runs_again_under_its_new_name_without_its_old_reason(client):
    with pytest.raises(OSError), tracking.run(client, "first") as run_id:
        raise OSError("lost")
    with tracking.run(client, "second", resume_run_id=run_id) as resumed:
        assert resumed == run_id and client.get_run(run_id).info.status == "RUNNING"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "second"
    assert tracking.STATUS_REASON_TAG not in run.data.tags


def test_end_if_running_ends_only_a_running_run(client):
    running = client.create_run("0").info.run_id
    assert tracking.end_if_running(client, running, tracking.FAILED, "its worker stopped")
    assert client.get_run(running).info.status == "FAILED"
    assert not tracking.end_if_running(client, running, tracking.KILLED, "again")
    assert client.get_run(running).data.tags[tracking.STATUS_REASON_TAG] == "its worker stopped"


def test_experiment_from_the_environment(client, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere")
    experiment = tracking.experiment_id(client)
    assert client.get_experiment(experiment).name == "elsewhere"
    assert tracking.experiment_id(client) == experiment  # found, not created twice


def test_model_uri_turns_a_run_id_into_its_model():
    run_id = "0123456789abcdef" * 2
    assert tracking.model_uri(run_id) == f"runs:/{run_id}/model"
    assert tracking.model_uri("models:/moonvae-vae@champion") == "models:/moonvae-vae@champion"


def test_register_once_registers_a_model_once_and_points_the_alias(client, small_config):
    with tracking.run(client, "train") as run_id:
        outcome = run_training(small_config, client, run_id)
    model_id = outcome.model_info.model_id
    first = tracking.register_once(client, model_id, "m", "best")
    again = tracking.register_once(client, model_id, "m", "other")
    assert first == again == "1"
    assert [str(v.version) for v in client.search_model_versions("name='m'")] == ["1"]
    assert {alias: str(client.get_model_version_by_alias("m", alias).version) for alias in ("best", "other")} == {
        "best": "1",
        "other": "1",
    }
