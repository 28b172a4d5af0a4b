"""Workers as tasks on a Ray cluster, and `connect`: the executor a `--ray-address` (or none) asks for.

The moonvae package travels with the job (Ray's runtime environment), so the cluster's
machines need no checkout, only the same Python packages; settings travel by environment.
Ray retries a task whose worker process died (`max_retries`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from moonvae.config import ConfigError
from moonvae.tuning import signals
from moonvae.tuning.executor import (
    DONE,
    MAX_RETRIES,
    POLL_SECONDS,
    STOP_SECONDS,
    STOPPED,
    Watcher,
    Work,
    WorkerLost,
    first_line,
)
from moonvae.tuning.processes import Local

CONNECT_SECONDS = 5.0  # to reach a Ray cluster's port; Ray itself waits minutes before it gives up
# Passed on to Ray workers when set here (local workers inherit the whole environment). The runtime
# environment is visible to whoever can reach the cluster's dashboard: on shared clusters keep
# passwords in ~/.pgpass on the nodes instead.
FORWARDED = (
    "PGPASSWORD",
    "PGUSER",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MOONVAE_HEARTBEAT_SECONDS",
    "MOONVAE_GRACE_SECONDS",
)
DEFAULT_PORTS = {"ray://": 10001, "": 6379}  # the Ray client server's port, and the head's (GCS)


class RayCluster:
    """Workers as Ray tasks on a cluster: the moonvae package travels with them, settings by environment."""

    def __init__(self, address: str, dashboard_url: str | None) -> None:
        self.address = address
        self.dashboard_url = dashboard_url

    def describe(self, workers: int) -> str:
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 0))
        dashboard = f"; dashboard http://{self.dashboard_url}" if self.dashboard_url else ""
        return f"{workers} Ray tasks on {self.address} ({cpus} CPUs){dashboard}"

    def run(self, work: Work, order: Any, workers: int, threads: int, env: dict[str, str], watcher: Watcher) -> None:
        import ray

        forwarded = {key: os.environ[key] for key in FORWARDED if os.environ.get(key)}
        task = ray.remote(study_worker).options(
            num_cpus=threads, max_retries=MAX_RETRIES, runtime_env={"env_vars": forwarded | env}
        )
        pending = [task.remote(work, order, number) for number in range(workers)]
        try:
            signals.raise_if_stopping()
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                signals.raise_if_stopping()
                watcher.poll()
                for ref in done:
                    if ray.get(ref) == STOPPED:
                        watcher.say("a worker was stopped by a signal")
        except ray.exceptions.RayTaskError as error:
            _cancel(pending)
            raise error.cause from None  # the worker's own error (TooManyFailures, ConfigError, ...)
        except ray.exceptions.RayError as error:  # a worker lost more often than it is retried, say
            _cancel(pending)
            raise WorkerLost(str(error).strip().splitlines()[0]) from None
        except BaseException:
            _cancel(pending)
            with suppress(Exception):
                watcher.poll()
            raise


def _cancel(pending: list[Any]) -> None:
    """Cancel running tasks (a KeyboardInterrupt in each), wait for them to end their trials, then force the rest."""
    import ray

    if not pending:
        return
    for ref in pending:
        ray.cancel(ref)
    try:
        ray.wait(pending, num_returns=len(pending), timeout=STOP_SECONDS)
    finally:
        ready, left = ray.wait(pending, num_returns=len(pending), timeout=0)
        for ref in left:
            ray.cancel(ref, force=True)


def study_worker(work: Work, order: Any, number: int) -> str:
    """A Ray task: one worker (its process shows as `ray::study_worker`).

    Ray cancels a running task by calling SIGINT's handler, which its workers otherwise ignore.
    """
    stop = signals.stop_flag()
    stop.clear()  # Ray reuses worker processes: an earlier task may have been stopped in this one
    with signals.stop_on_signals():
        try:
            work(order, number, stop)
        except KeyboardInterrupt:
            return STOPPED
    return STOPPED if stop.is_set() else DONE


Executor = Local | RayCluster


@contextmanager
def connect(address: str | None) -> Iterator[Executor]:
    """The executor for `--ray-address`: local without one, else connected to the Ray cluster until the call ends.

    An unreachable cluster is a ConfigError before anything is created.
    """
    if not address:
        yield Local()
        return
    try:
        import ray
    except ImportError:
        raise ConfigError("ray_address needs Ray: pip install 'moonvae[ray]'") from None
    _probe(address)
    package = Path(__file__).resolve().parents[1]  # the whole moonvae package, not only this subpackage
    try:
        context = ray.init(
            address=address,
            runtime_env={"py_modules": [str(package)], "excludes": ["__pycache__"]},
            logging_level=logging.WARNING,
        )
    except Exception as error:
        reason = first_line(error)
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {reason}") from None
    try:
        yield RayCluster(address, getattr(context, "dashboard_url", None))
    finally:
        ray.shutdown()


def _probe(address: str) -> None:
    """Fail in seconds on a closed port: Ray waits minutes for a head that is not there."""
    if address == "auto":
        return  # Ray finds the local cluster or says at once that there is none
    scheme = "ray://" if address.startswith("ray://") else ""
    host, _, port = address.removeprefix(scheme).partition(":")
    if not host or not (port or "0").isdigit():
        raise ConfigError(f"ray_address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port or DEFAULT_PORTS[scheme])), timeout=CONNECT_SECONDS):
            pass
    except OSError as error:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}") from None
