"""Trained, logged and registered models in a throwaway sqlite store, for the pyfunc and serving tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
from conftest import use_folder
from mlflow.models import Model

from moonvae import pyfunc, tracking
from moonvae.config import RunConfig
from moonvae.experiment import Outcome, run_training
from moonvae.tracking import Client
from moonvae.train import one_torch_thread


@contextmanager
def tracking_store(path: Path) -> Iterator[Client]:
    """A fresh sqlite store (artifacts beside it) that the process tracks to while the context lasts.

    For module-scoped fixtures, which cannot use the function-scoped `workdir`.
    """
    with pytest.MonkeyPatch.context() as patch:
        use_folder(path, patch)
        yield tracking.client()


def train_and_register(client: Client, config: RunConfig, name: str) -> tuple[str, Outcome]:
    """Train `config` in a run, log the model, register it as `name` with alias champion; returns the run id."""
    with one_torch_thread(), tracking.run(client, f"train-{name}") as run_id:
        outcome = run_training(config, client, run_id, cache_dir=Path("data"))
    tracking.register_model(client, outcome.model_info, name, description=pyfunc.DESCRIPTION)
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
