"""`mlflow models serve` on the registered CVAE: JSON in, predictions out, 400 for bad input, still serving after."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import pytest
from conftest import free_port, running_server
from trained import older_model, tracking_store, train_and_register

from moonvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

CONFIG = RunConfig(  # serving is under test, not sample quality: the smallest model that trains
    data=DataConfig(n_samples=400),
    model=ModelConfig(model="cvae", latent_dim=4, decoder_hidden=(16,)),
    train=TrainConfig(max_epochs=10),
)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    with tracking_store(folder) as client:
        train_and_register(client, CONFIG, "moonvae-cvae")
        yield folder


def serve(folder, model_uri: str):
    """`mlflow models serve` of the model on a free loopback port; the server's process group is always stopped."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    return running_server(command, folder, port, "/ping")


@pytest.fixture(scope="module")
def server(registered):
    """The registered CVAE, served."""
    with serve(registered, "models:/moonvae-cvae@champion") as url:
        yield url


def invoke(url: str, columns: list[str], rows: list[list], **params) -> tuple[int, dict]:
    return post(f"{url}/invocations", {"dataframe_split": {"columns": columns, "data": rows}, "params": params})


def test_sample_over_http_is_seeded(server):
    status, body = invoke(server, ["label"], [[0], [1], [1]], mode="sample", seed=7)
    assert status == 200, body
    predictions = body["predictions"]
    assert [row["label"] for row in predictions] == [0, 1, 1]
    assert all(set(row) == {"x1", "x2", "label"} for row in predictions)
    assert invoke(server, ["label"], [[0], [1], [1]], mode="sample", seed=7)[1] == body
    assert invoke(server, ["label"], [[0], [1], [1]], mode="sample", seed=8)[1] != body


def test_reconstruct_over_http(server):
    status, body = invoke(server, ["x1", "x2", "label"], [[0.0, 1.0, 0], [1.0, -0.5, 1]], mode="reconstruct")
    assert status == 200, body
    assert len(body["predictions"]) == 2
    assert all(abs(row["x1"]) < 10 and abs(row["x2"]) < 10 for row in body["predictions"])


@pytest.mark.parametrize(
    ("columns", "rows", "params", "message"),
    [
        (["label"], [[0], [7]], {}, "label must be 0 or 1 in every row; row 1 has 7"),
        (["label"], [[0]], {"mode": "dream"}, "unknown mode 'dream'"),
        (["x1", "x2", "label"], [[None, 1.0, 0]], {"mode": "reconstruct"}, "x1 must be a finite number"),
        (["label"], [[0]], {"mode": "traverse", "steps": 1}, "steps must be at least 2"),
        (["label"], [[0]], {"source": "uniform"}, "unknown source 'uniform'"),
    ],
)
def test_bad_requests_get_400_and_the_server_keeps_serving(server, columns, rows, params, message):
    status, body = invoke(server, columns, rows, **params)
    assert status == 400, body
    assert body["error_code"] == "INVALID_PARAMETER_VALUE" and message in body["message"]
    assert invoke(server, ["label"], [[1]], seed=0)[0] == 200


def test_an_older_model_refuses_the_mixture_it_does_not_hold_with_400(registered):
    older = older_model("models:/moonvae-cvae@champion", registered / "older")
    with serve(registered, str(older)) as url:
        status, body = invoke(url, ["label"], [[0]], source="mixture")
        assert status == 400, body
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "this model holds no latent mixture" in body["message"]
        status, body = invoke(url, ["label"], [[0], [1]], seed=0)  # the old default: posterior
        assert status == 200 and len(body["predictions"]) == 2
