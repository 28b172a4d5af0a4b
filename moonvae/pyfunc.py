"""The trained VAE/CVAE as an MLflow pyfunc model.

The model directory holds the weights (a plain state dict, loaded with
`weights_only=True`, never an unpickled module) and the run config as JSON;
`MoonVAEModel` rebuilds the network from them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from moonvae.config import RunConfig
from moonvae.data import Split
from moonvae.models import VAE, build_model

WEIGHTS = "weights"
CONFIG = "config"
PIP_REQUIREMENTS = [
    f"mlflow=={mlflow.__version__}",
    "torch==2.13.0",
    "pandas",
    "numpy",
]


def load_network(weights_path: str | Path, config_path: str | Path) -> tuple[VAE, RunConfig]:
    """Rebuild the network from the saved config and load its weights safely."""
    config = RunConfig.from_dict(json.loads(Path(config_path).read_text()))
    network = build_model(config.model, seed=0)
    network.load_state_dict(torch.load(weights_path, weights_only=True))
    return network.eval(), config


class MoonVAEModel(mlflow.pyfunc.PythonModel):
    """Samples from the prior (`mode=sample`) or reconstructs points (`mode=reconstruct`)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.network, self.config = load_network(context.artifacts[WEIGHTS], context.artifacts[CONFIG])

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        labels = torch.as_tensor(model_input["label"].to_numpy()) if "label" in model_input else None
        if params.get("mode", "sample") == "reconstruct":
            x = torch.as_tensor(model_input[["x1", "x2"]].to_numpy(dtype="float32"))
            with torch.inference_mode():
                points = self.network(x, labels)[0]
        else:
            generator = torch.Generator().manual_seed(int(params.get("seed", 0)))
            points = self.network.sample(len(model_input), labels, generator)
        return pd.DataFrame(points.numpy(), columns=["x1", "x2"])


def signature() -> ModelSignature:
    inputs = Schema(
        [
            ColSpec("double", "x1", required=False),
            ColSpec("double", "x2", required=False),
            ColSpec("long", "label", required=False),
        ]
    )
    outputs = Schema([ColSpec("double", "x1"), ColSpec("double", "x2")])
    params = ParamSchema([ParamSpec("mode", "string", "sample"), ParamSpec("seed", "long", 0)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def log_model(run_id: str, network: VAE, config: RunConfig, train: Split, name: str = "model") -> ModelInfo:
    """Log the network to the run as a pyfunc model (no active run needed: trials run in threads)."""
    with tempfile.TemporaryDirectory() as tmp:
        weights_path, config_path = Path(tmp) / "weights.pt", Path(tmp) / "config.json"
        torch.save(network.state_dict(), weights_path)
        config_path.write_text(json.dumps(config.to_dict(), indent=2))
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=MoonVAEModel(),
            artifacts={WEIGHTS: str(weights_path), CONFIG: str(config_path)},
            signature=signature(),
            pip_requirements=PIP_REQUIREMENTS,
        )
