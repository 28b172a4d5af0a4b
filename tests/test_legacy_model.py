"""A model logged by moonvae 0.1, before the package moved into subpackages, loads and samples today.

tests/fixtures/cvae-0.1.0 is such a model's directory as MLflow stored it (a 20-epoch CVAE),
without the copy of the 0.1 package that `code_paths` adds: a process that has imported
moonvae, as this one has, runs the stored `model_code.py` (`from moonvae.pyfunc import
MoonVAEModel`) against the installed package.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from moonvae.config import SOURCES, RunConfig
from moonvae.core.models import build_model

MODEL = Path(__file__).parent / "fixtures" / "cvae-0.1.0"


def test_the_stored_model_code_is_the_old_import_path():
    assert "from moonvae.pyfunc import MoonVAEModel" in (MODEL / "model_code.py").read_text()


def test_a_model_logged_before_the_move_samples_from_every_source():
    model = mlflow.pyfunc.load_model(str(MODEL))
    labels = pd.DataFrame({"label": [0, 1] * 50})
    stored = json.loads((MODEL / "artifacts" / "sources.json").read_text())["default"]
    assert model.unwrap_python_model().default_source == stored
    for source in SOURCES:
        out = model.predict(labels, params={"mode": "sample", "source": source, "seed": 3})
        again = model.predict(labels, params={"mode": "sample", "source": source, "seed": 3})
        assert out.shape == (100, 3) and np.isfinite(out[["x1", "x2"]].to_numpy()).all()
        assert out["label"].tolist() == labels["label"].tolist()
        pd.testing.assert_frame_equal(out, again)


def test_a_model_logged_before_the_move_reconstructs_with_its_stored_weights():
    """The loaded model's reconstruction is the stored weights' own, rebuilt here without MLflow."""
    model = mlflow.pyfunc.load_model(str(MODEL))
    points = pd.DataFrame({"x1": [0.0, 1.0, 2.0], "x2": [1.0, 0.0, 0.5], "label": [0, 1, 1]})
    out = model.predict(points, params={"mode": "reconstruct"})
    config = RunConfig.from_dict(json.loads((MODEL / "artifacts" / "config.json").read_text()))
    network = build_model(config.model, seed=0)
    network.load_state_dict(torch.load(MODEL / "artifacts" / "weights.pt", weights_only=True))
    network.eval()
    x = torch.tensor(points[["x1", "x2"]].to_numpy(), dtype=torch.float32)
    y = torch.tensor(points["label"].to_numpy())
    with torch.inference_mode():
        expected = network.decode(network.encode(x, y)[0], y).numpy()
    np.testing.assert_allclose(out[["x1", "x2"]].to_numpy(), expected, rtol=1e-6)
