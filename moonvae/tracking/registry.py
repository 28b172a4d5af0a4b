"""The model registry's mechanics: a logged model registered once, aliases moved, duplicates undone."""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from moonvae.tracking.names import CHAMPION


def register_model(
    mlflow_client: MlflowClient,
    model_info: ModelInfo,
    name: str,
    *,
    alias: str | None = CHAMPION,
    tags: dict[str, Any] | None = None,
) -> str:
    """Register a logged model as a new version of `name`, optionally moving `alias` to it; returns the version.

    The version keeps the run it came from and the logged model's id, so the UI links all three, and
    the logged model's description (which names its default sampling source, with the figures).
    A new registered model takes the one description of every moonvae model (how to call it).
    """
    own = (model_info.metadata or {}).get("description")
    try:
        mlflow_client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        from moonvae.serving.pyfunc import DESCRIPTION  # MLflow's pyfunc loads only where a model is

        mlflow_client.create_registered_model(name, description=DESCRIPTION)
    version = mlflow_client.create_model_version(
        name,
        model_info.model_uri,
        run_id=model_info.run_id,
        model_id=model_info.model_id,
        tags={key: str(value) for key, value in (tags or {}).items()},
        description=own,
    ).version
    if alias:
        mlflow_client.set_registered_model_alias(name, alias, version)
    return str(version)


def logged_model_info(model_id: str) -> ModelInfo:
    """The `ModelInfo` of a model logged earlier, possibly by another process (`models:/m-<id>`)."""
    return mlflow.models.get_model_info(f"models:/{model_id}")


def registered_version(mlflow_client: MlflowClient, name: str, model_id: str) -> str | None:
    """The first version of `name` that holds this logged model, if any (so a rerun registers nothing new)."""
    try:
        versions = mlflow_client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    # the sqlite registry keeps the logged model as the version's source, not as model_id
    found = [version.version for version in versions if version.source == f"models:/{model_id}"]
    return str(min(found, key=int)) if found else None


def registered_aliases(mlflow_client: MlflowClient, name: str) -> dict[str, str]:
    """The aliases of a registered model, {alias: version}, sorted by alias; empty when `name` is not registered."""
    try:
        aliases = mlflow_client.get_registered_model(name).aliases
    except mlflow.exceptions.MlflowException:
        return {}
    return {alias: str(aliases[alias]) for alias in sorted(aliases)}


def set_alias(mlflow_client: MlflowClient, name: str, alias: str, version: str) -> None:
    mlflow_client.set_registered_model_alias(name, alias, version)


def delete_version(mlflow_client: MlflowClient, name: str, version: str) -> None:
    mlflow_client.delete_model_version(name, version)


def register_once(
    mlflow_client: MlflowClient,
    model_id: str,
    name: str,
    alias: str,
    *,
    tags: dict[str, Any] | None = None,
) -> str:
    """The version of `name` that holds this logged model, registered first if none does; `alias` points at it."""
    version = registered_version(mlflow_client, name, model_id)
    if version is not None:
        set_alias(mlflow_client, name, alias, version)
        return version
    info = logged_model_info(model_id)
    version = register_model(mlflow_client, info, name, alias=alias, tags=tags)
    return keep_first_version(mlflow_client, name, alias, model_id, version)


def keep_first_version(mlflow_client: MlflowClient, name: str, alias: str, model_id: str, version: str) -> str:
    """Undo a duplicate registration: two workers finishing a study together may both register its best model.

    Each checks after registering; the one that does not hold the first version of
    the model deletes its own and points the alias at the first.
    """
    first = registered_version(mlflow_client, name, model_id)
    if first is None or first == version:
        return version
    delete_version(mlflow_client, name, version)
    set_alias(mlflow_client, name, alias, first)
    return first
