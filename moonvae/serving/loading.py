"""Loading a logged model: a URI or a bare run id, to the Python model object it holds."""

from __future__ import annotations

from typing import Any

import mlflow

RUN_ID_LENGTH = 32  # MLflow run ids are 32 hex digits


def model_uri(reference: str) -> str:
    """A model URI as given (`models:/...`, `runs:/...`, a path), or a bare run id -> its logged `model`."""
    is_run_id = len(reference) == RUN_ID_LENGTH and all(c in "0123456789abcdef" for c in reference)
    return f"runs:/{reference}/model" if is_run_id else reference


def load_python_model(reference: str) -> tuple[Any, str | None]:
    """Load a logged pyfunc model (URI or run id): its Python model object and the run that logged it."""
    model = mlflow.pyfunc.load_model(model_uri(reference))
    return model.unwrap_python_model(), model.metadata.run_id
