"""Shared fixtures: every test gets its own working directory and sqlite tracking store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moonvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with its own sqlite tracking store and no `mlflow run` variables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def small_config() -> RunConfig:
    """A config that trains in well under a second."""
    return RunConfig(
        data=DataConfig(n_samples=400),
        model=ModelConfig(latent_dim=8, decoder_hidden=(32,)),
        train=TrainConfig(max_epochs=15),
    )


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
