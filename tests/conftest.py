"""Shared fixtures: every test gets its own working directory and sqlite tracking store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from moonvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def use_folder(folder: Path, patch: pytest.MonkeyPatch) -> Path:
    """Work in `folder`, with its own sqlite tracking store and none of `mlflow run`'s variables.

    The one test environment: the `workdir` fixture, module-scoped stores and notebooks all use it.
    """
    patch.chdir(folder)  # the default experiment keeps its artifacts in ./mlruns
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        patch.delenv(name, raising=False)
    return folder


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with its own sqlite tracking store."""
    return use_folder(tmp_path, monkeypatch)


@pytest.fixture
def small_config() -> RunConfig:
    """A config that trains in well under a second."""
    return RunConfig(
        data=DataConfig(n_samples=400),
        model=ModelConfig(latent_dim=8, decoder_hidden=(32,)),
        train=TrainConfig(max_epochs=15),
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train on one torch thread, as train and tune do."""
    from moonvae.core.train import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture
def moons(tmp_path: Path, small_config: RunConfig):
    """The small config's data split, cached in the test's folder."""
    from moonvae.core import data

    return data.load(small_config.data, tmp_path)


def subprocess_env(workdir: Path) -> dict[str, str]:
    """The environment for a child `moonvae` or `mlflow` process: this venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    env["PYTHONPATH"] = str(ROOT)
    return env


def moonvae(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m moonvae ARGS` as a user runs it, in `workdir` with its own tracking store."""
    command = [sys.executable, "-m", "moonvae", *args]
    return subprocess.run(command, cwd=workdir, env=subprocess_env(workdir), capture_output=True, text=True)


def mlflow_run(workdir: Path, entry_point: str, *params: str) -> subprocess.CompletedProcess:
    """`mlflow run <project> -e ENTRY_POINT --env-manager local -P PARAM ...` from `workdir`."""
    args = [arg for param in params for arg in ("-P", param)]
    command = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry_point, "--env-manager", "local", *args]
    return subprocess.run(command, cwd=workdir, env=subprocess_env(workdir), capture_output=True, text=True)


SERVER_READY_SECONDS = 120  # mlflow servers are ready in 4-6 s on an idle machine; generous for a busy CI runner


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(command: list[str], folder: Path, port: int, ready_path: str) -> Iterator[str]:
    """Start a server process on a loopback port, wait until `ready_path` answers 200, always stop it.

    It runs in its own process group, so its worker processes stop with it; its output
    goes to `folder/server.log`, quoted when it fails to start.
    """
    log = folder / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            command,
            cwd=folder,
            env=subprocess_env(folder),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_READY_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"{command[2:4]} exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}{ready_path}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{command[2:4]} not ready after {SERVER_READY_SECONDS} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="session")
def postgres():  # -> services.Postgres
    """A throwaway PostgreSQL cluster (tests/services.py) for the whole session."""
    from services import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_url(postgres) -> str:
    """A database on it for the whole session."""
    return postgres.url


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[str]:
    """A throwaway `mlflow server` with proxied artifacts (tests/services.py); its URL."""
    from services import tracking_server as server

    with server(tmp_path / "server") as url:
        yield url


@pytest.fixture(scope="session")
def ray_cluster():  # -> services.RayHead
    """A throwaway one-node Ray cluster with 2 CPUs (tests/services.py): its address, and its tasks' processes."""
    from services import ray_head

    with ray_head(cpus=2) as head:
        yield head
