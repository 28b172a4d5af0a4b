"""Where runs go, and how they are logged cheaply: runs, metrics, params, tags and inputs through one client.

Everything here takes an explicit `MlflowClient` and run id rather than the
fluent API's per-thread active run, so trials in worker threads log to the
right run. Metrics are buffered and sent with `log_batch`: one call per point
costs more than training these models.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from moonvae.tracking import lineage, names

MAX_BATCH = 1000  # log_batch accepts at most 1000 metrics per call
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"  # how a run ends, as MLflow names it
EXPERIMENT = "moonvae"  # where runs go unless MLFLOW_EXPERIMENT_NAME / _ID or `mlflow run --experiment-name` say

Client = MlflowClient  # the type other modules annotate with, so that only this module imports MLflow
TrackingError = mlflow.exceptions.MlflowException  # what a call raises, the tracking server's retries spent included


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, otherwise an sqlite store in the working directory.

    Set explicitly because an old ./mlruns folder would otherwise flip MLflow
    back to the deprecated file store.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client() -> MlflowClient:
    """A client on the project's tracking store, also made the store of the fluent API and of child processes.

    Through the environment rather than `mlflow.set_tracking_uri`, whose process-wide
    value would outlive a later change of MLFLOW_TRACKING_URI in the same process.
    """
    uri = tracking_uri()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the console readable
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run ..." line per trial
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return MlflowClient(uri)


def experiment_id(mlflow_client: MlflowClient) -> str:
    """The experiment `mlflow run` chose, or MLFLOW_EXPERIMENT_NAME, or `moonvae` (created on first use)."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = mlflow_client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:  # tagged as model training, so the UI opens on its runs rather than on GenAI traces
        return mlflow_client.create_experiment(name, tags={names.EXPERIMENT_KIND_TAG: "custom_model_development"})
    except mlflow.exceptions.MlflowException:  # another worker created it a moment ago
        return mlflow_client.get_experiment_by_name(name).experiment_id


@functools.cache
def _context_tags() -> tuple[tuple[str, str], ...]:
    return tuple((resolve_tags() | lineage.lineage()).items())


def context_tags() -> dict[str, str]:
    """The tags that say where a run came from: MLflow's (source, user), and which code ran (`lineage`).

    Computed once per process: asking git for every trial's run would cost more than logging it.
    """
    return dict(_context_tags())


def start_run(
    mlflow_client: MlflowClient,
    run_name: str,
    *,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Create a run (or mark an earlier one RUNNING again, under `run_name`); its id. End it with `end_after`."""
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if not resume_run_id:
        tags = context_tags() | all_tags
        return mlflow_client.create_run(experiment_id(mlflow_client), run_name=run_name, tags=tags).info.run_id
    mlflow_client.update_run(resume_run_id, status=RunStatus.to_string(RunStatus.RUNNING), name=run_name)
    if names.STATUS_REASON_TAG in mlflow_client.get_run(resume_run_id).data.tags:  # why it stopped last time
        mlflow_client.delete_tag(resume_run_id, names.STATUS_REASON_TAG)
    set_tags(mlflow_client, resume_run_id, lineage.lineage() | all_tags | {MLFLOW_RUN_NAME: run_name})
    return resume_run_id


def end_after(
    mlflow_client: MlflowClient,
    run_id: str,
    error: BaseException | None,
    killed_by: tuple[type[BaseException], ...] = (),
) -> None:
    """End a run by what stopped it: FINISHED without an error, KILLED on Ctrl-C or a `killed_by` stop, else FAILED."""
    if error is None:
        end_run(mlflow_client, run_id, FINISHED)
    elif isinstance(error, KeyboardInterrupt):
        end_run(mlflow_client, run_id, KILLED, "interrupted")
    elif isinstance(error, killed_by):
        end_run(mlflow_client, run_id, KILLED, str(error) or type(error).__name__)
    else:
        end_run(mlflow_client, run_id, FAILED, f"{type(error).__name__}: {error}")


@contextmanager
def run(
    mlflow_client: MlflowClient,
    run_name: str,
    *,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    killed_by: tuple[type[BaseException], ...] = (),
) -> Iterator[str]:
    """Create (or resume) a run and always end it: FINISHED, FAILED, or KILLED on Ctrl-C.

    A failure's reason is kept as a tag so the UI shows why a run did not finish.
    Exceptions of a `killed_by` type are deliberate stops, not failures (a pruned
    trial): the run ends KILLED with the exception's message as the reason.
    A resumed run takes `run_name` and is marked RUNNING again until it ends.
    """
    run_id = start_run(mlflow_client, run_name, parent_run_id=parent_run_id, resume_run_id=resume_run_id, tags=tags)
    try:
        yield run_id
    except BaseException as error:
        end_after(mlflow_client, run_id, error, killed_by)
        raise
    end_after(mlflow_client, run_id, None)


def end_run(mlflow_client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run as FINISHED, FAILED or KILLED, keeping the reason as a tag the UI shows."""
    if reason:
        mlflow_client.set_tag(run_id, names.STATUS_REASON_TAG, reason[:5000])
    mlflow_client.set_terminated(run_id, status)


def end_if_running(mlflow_client: MlflowClient, run_id: str, status: str, reason: str) -> bool:
    """End a run that another process left RUNNING (a dead worker's); False if it had ended already."""
    if mlflow_client.get_run(run_id).info.status != "RUNNING":
        return False
    end_run(mlflow_client, run_id, status, reason)
    return True


def run_exists(mlflow_client: MlflowClient, run_id: str) -> bool:
    """Whether this tracking store holds the run (a worker on another machine may see another store)."""
    try:
        mlflow_client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def is_active_in(mlflow_client: MlflowClient, run_id: str, experiment: str) -> bool:
    """Whether the run exists, is not deleted and belongs to `experiment` (a study run worth resuming)."""
    try:
        found = mlflow_client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return found.info.experiment_id == experiment and found.info.lifecycle_stage == "active"


def quiet() -> None:
    """Keep a long tune's console to its own lines: MLflow repeats the same notices for every trial."""
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    for notice in ("The specified dataset source can be interpreted", ".*An input example was not provided"):
        warnings.filterwarnings("ignore", message=notice, category=UserWarning)


def set_tag(mlflow_client: MlflowClient, run_id: str, key: str, value: Any) -> None:
    mlflow_client.set_tag(run_id, key, str(value))


def set_tags(mlflow_client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    if tags:
        mlflow_client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def log_params(mlflow_client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log the params the run does not have yet.

    `mlflow run` has already logged every `-P` value in the user's spelling;
    logging `0.001` over `1e-3` would raise, so existing keys are left alone.
    """
    existing = mlflow_client.get_run(run_id).data.params
    missing = [Param(key, str(value)) for key, value in params.items() if key not in existing]
    for start in range(0, len(missing), 100):  # log_batch takes at most 100 params per call
        mlflow_client.log_batch(run_id, params=missing[start : start + 100])


def log_metrics(mlflow_client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """A few points at once, in one call (for many points per run, use MetricBuffer)."""
    timestamp = int(time.time() * 1000)
    points = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
    if points:
        mlflow_client.log_batch(run_id, metrics=points)


def metric_steps(mlflow_client: MlflowClient, run_id: str, key: str) -> set[int]:
    """The steps at which a run already holds `key`."""
    return {point.step for point in mlflow_client.get_metric_history(run_id, key)}


class MetricBuffer:
    """Collects metric points for one run and sends them in batches.

    Flushes when `flush_seconds` have passed since the last flush (so the UI
    follows a long run), when a batch is full, and on `close()`.
    """

    def __init__(self, mlflow_client: MlflowClient, run_id: str, flush_seconds: float = 10.0) -> None:
        self._client = mlflow_client
        self._run_id = run_id
        self._flush_seconds = flush_seconds
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def add(self, metrics: dict[str, float], step: int = 0) -> None:
        timestamp = int(time.time() * 1000)
        with self._lock:
            self._pending += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
            due = len(self._pending) >= MAX_BATCH or time.monotonic() - self._last_flush >= self._flush_seconds
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._last_flush = time.monotonic()
        for start in range(0, len(pending), MAX_BATCH):
            self._client.log_batch(self._run_id, metrics=pending[start : start + MAX_BATCH])

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> MetricBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_dataset(
    mlflow_client: MlflowClient, run_id: str, x: np.ndarray, y: np.ndarray, source: Path, context: str = "training"
) -> None:
    """Record the data set as a run input, so the UI shows which data each run used."""
    dataset = mlflow.data.from_numpy(x, targets=y, source=str(Path(source).resolve()), name=Path(source).stem)
    tags = [InputTag(key="mlflow.data.context", value=context)]
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=tags)]
    try:
        mlflow_client.log_inputs(run_id, datasets=inputs)
    except mlflow.exceptions.MlflowException as error:
        if "UNIQUE constraint" not in str(error) and "duplicate key" not in str(error):
            raise
        # another run created the experiment's row for this data set a moment ago: use it
        mlflow_client.log_inputs(run_id, datasets=inputs)


def log_text(mlflow_client: MlflowClient, run_id: str, text: str, artifact_file: str) -> None:
    mlflow_client.log_text(run_id, text, artifact_file)


def metric_histories(
    mlflow_client: MlflowClient, run_id: str, keys: tuple[str, ...]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each metric's (steps, values) in step order; metrics the run never logged are left out."""
    histories = {}
    for key in keys:
        points = sorted(mlflow_client.get_metric_history(run_id, key), key=lambda point: point.step)
        if points:
            histories[key] = (np.array([p.step for p in points]), np.array([p.value for p in points]))
    return histories


def run_metrics(mlflow_client: MlflowClient, run_id: str) -> dict[str, float]:
    """A run's latest metric values; empty when the run no longer exists."""
    try:
        return dict(mlflow_client.get_run(run_id).data.metrics)
    except mlflow.exceptions.MlflowException:
        return {}


def log_artifact(mlflow_client: MlflowClient, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    mlflow_client.log_artifact(run_id, str(path), artifact_path)


def log_image(mlflow_client: MlflowClient, run_id: str, pixels: np.ndarray, key: str, step: int) -> None:
    """An image at a training step (H x W x 3 uint8 pixels), one of MLflow's per-step images.

    The UI's chart view shows each key as an image grid across runs, with a slider over the steps.
    MLflow keeps the image as `images/{key}+step+{step}+...png` beside a small .webp thumbnail.
    """
    mlflow_client.log_image(run_id, pixels, key=key, step=step)


def log_png(mlflow_client: MlflowClient, run_id: str, png: bytes, artifact_file: str) -> None:
    """PNG bytes as the artifact `artifact_file` (e.g. `plots/data.png`): an image the UI shows, offline too."""
    folder, name = posixpath.split(artifact_file)
    with tempfile.TemporaryDirectory() as local:
        path = Path(local) / name
        path.write_bytes(png)
        mlflow_client.log_artifact(run_id, str(path), folder or None)
