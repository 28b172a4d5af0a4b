"""Trained, logged and registered models in a throwaway sqlite store, for the pyfunc and serving tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
from conftest import use_folder
from mlflow.models import Model

from moonvae.config import RunConfig
from moonvae.core.train import one_torch_thread
from moonvae.serving import pyfunc
from moonvae.tracking import registry, runs
from moonvae.tracking.experiment import Outcome, run_training
from moonvae.tracking.runs import Client


@contextmanager
def tracking_store(path: Path) -> Iterator[Client]:
    """A fresh sqlite store (artifacts beside it) that the process tracks to while the context lasts.

    For module-scoped fixtures, which cannot use the function-scoped `workdir`.
    """
    with pytest.MonkeyPatch.context() as patch:
        use_folder(path, patch)
        yield runs.client()


def train_and_register(client: Client, config: RunConfig, name: str) -> tuple[str, Outcome]:
    """Train `config` in a run, log the model, register it as `name` with alias champion; returns the run id."""
    with one_torch_thread(), runs.run(client, f"train-{name}") as run_id:
        outcome = run_training(config, client, run_id, cache_dir=Path("data"))
    registry.register_model(client, outcome.model_info, name)
    return run_id, outcome


def older_model(model_uri: str, folder: Path) -> Path:
    """A local copy of a logged model as moonvae logged it before latent mixtures.

    No `mixture.pt` or `sources.json` (nor their entries in MLmodel), and `source` defaulting to posterior.
    """
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder)))
    model = Model.load(local / "MLmodel")
    artifacts = model.flavors["python_function"]["artifacts"]
    for key in (pyfunc.MIXTURE, pyfunc.JUDGEMENT):
        (local / artifacts.pop(key)["path"]).unlink()
    model.signature = pyfunc.signature(pyfunc.LEGACY_SOURCE)
    for key in ("source", "sources"):
        model.metadata.pop(key)
    model.save(local / "MLmodel")
    return local
