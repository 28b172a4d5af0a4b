"""Runs a study's workers: in this process, in processes of their own, or as tasks on a Ray cluster.

A worker joins its study through the shared Optuna storage and tracking store and
works until the study holds its trials, so it needs nothing from the driver but its
order (plain values) and its environment (the storage URL, which may hold a password,
travels by environment, never as an argument). The driver starts the workers, calls
`watcher.poll()` every second to show progress, and
- restarts a worker whose process died (on Ray, the task is retried); the trial it was
  training loses its heartbeat, is failed and replaced (studies.GRACE_SECONDS);
- on Ctrl-C or SIGTERM stops every worker at its next epoch, so their runs end KILLED
  and their trials FAIL, waits for them, then raises KeyboardInterrupt;
- stops the others when one raises, and raises that error.
One worker runs in this process, as `tune` always did; more run as processes, since
threads share one interpreter lock and a 2-core machine gained only 1.4x from them.
Nothing here knows Optuna or MLflow: `work` and the watcher bring them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

from moonvae.config import ConfigError

POLL_SECONDS = 1.0  # between progress updates while workers run
STOP_SECONDS = 60.0  # a stopped worker ends its trial at its next epoch; one still running after this is killed
MAX_RETRIES = 3  # restarts of a worker whose process died (on Ray: the task's max_retries)
CONNECT_SECONDS = 5.0  # to reach a Ray cluster's port; Ray itself waits minutes before it gives up
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what Docker, Kubernetes, systemd, Ray and `timeout` send
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
DONE, STOPPED, FAILED = "done", "stopped", "failed"  # how a worker ended

Work = Callable[[Any, int, threading.Event], None]  # work(order, worker number, stop): pickles by name


class Watcher(Protocol):
    """The driver's view of the study while its workers run."""

    def poll(self) -> None: ...  # called every POLL_SECONDS and once at the end

    def say(self, line: str) -> None: ...  # a line for the console, above the progress bar


class WorkerLost(RuntimeError):
    """A worker died more often than it may be restarted, or its cluster lost it."""


_spawning = threading.Lock()  # studies side by side start their workers from several threads
_stop = threading.Event()  # set by SIGINT or SIGTERM (Ray's cancel calls SIGINT's handler) under stop_on_signals
_stopped_by: int | None = None  # the first of them


def stopped_by() -> int | None:
    """The signal (SIGINT or SIGTERM) that stopped this process, if one did: the exit code is 128 + it."""
    return _stopped_by


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM ask this process to stop, so SIGTERM stops as cleanly as Ctrl-C.

    The handler only sets a flag; workers check it at every epoch and before each trial, and the
    driver between polls, and each then raises KeyboardInterrupt where that is safe. An exception
    raised by the handler itself could land between Optuna's ask and tell, or in a `__del__` or a
    weakref callback, where Python prints and swallows it.
    """

    def request_stop(signum: int, frame: Any) -> None:
        global _stopped_by
        _stopped_by = _stopped_by or signum
        _stop.set()

    previous = {each: signal.getsignal(each) for each in STOP_SIGNALS}
    for each in STOP_SIGNALS:
        signal.signal(each, request_stop)
    try:
        yield _stop
    finally:
        for each, handler in previous.items():
            signal.signal(each, signal.SIG_DFL if handler is None else handler)


def _raise_if_stopping() -> None:
    if _stop.is_set():
        raise KeyboardInterrupt


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a while (a worker in this process reads its settings there, as others do)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class Local:
    """Workers on this machine: one in this process, more in processes of their own (one core each).

    `own_processes`: even one worker gets a process of its own, as when studies run side by side.
    """

    own_processes: bool = False

    def describe(self, workers: int) -> str:
        return f"{workers} processes on this machine"

    def run(self, work: Work, order: Any, workers: int, threads: int, env: dict[str, str], watcher: Watcher) -> None:
        """Run `workers` copies of `work` (each with `threads` threads of its own) until all have returned."""
        _raise_if_stopping()
        if workers == 1 and not self.own_processes:
            with environment(env), _polling(watcher):
                work(order, 0, _stop)
            _raise_if_stopping()  # the worker saw the signal between trials and simply ended
            return
        _run_processes(work, order, workers, env, watcher)


@contextmanager
def _polling(watcher: Watcher) -> Iterator[None]:
    """Poll from a thread while the worker runs in this one, where Ctrl-C reaches it; once more at the end."""
    finished = threading.Event()

    def loop() -> None:
        while not finished.wait(POLL_SECONDS):
            with suppress(Exception):  # a passing error (a busy database): the final poll reports a lasting one
                watcher.poll()

    poller = threading.Thread(target=loop, name="progress", daemon=True)
    poller.start()
    try:
        yield
    finally:
        finished.set()
        poller.join()
        watcher.poll()


@dataclass
class _Process:
    number: int
    process: multiprocessing.process.BaseProcess
    outcome: Connection  # what the worker sends as it ends: (DONE | STOPPED | FAILED, error)
    restarts: int


def _run_processes(work: Work, order: Any, workers: int, env: dict[str, str], watcher: Watcher) -> None:
    context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and locks

    def start(number: int, restarts: int = 0) -> _Process:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_process_main, args=(work, order, number, sender), name=f"worker-{number}")
        with _spawning, environment(env), _children_ignore_signals():  # the environment is the whole process's
            process.start()
        sender.close()
        return _Process(number, process, receiver, restarts)

    running: list[_Process] = []
    try:
        for number in range(workers):
            running.append(start(number))
        while running:
            wait([each.process.sentinel for each in running], timeout=POLL_SECONDS)
            _raise_if_stopping()
            watcher.poll()
            for ended in [each for each in running if not each.process.is_alive()]:
                running.remove(ended)
                kind, error = _outcome(ended)
                if kind == FAILED and error is not None:
                    raise error
                if kind == FAILED:  # killed: a signal, the out-of-memory killer
                    died = f"worker {ended.number} died (exit code {ended.process.exitcode})"
                    if ended.restarts >= MAX_RETRIES:
                        raise WorkerLost(f"{died}, {ended.restarts + 1} times: giving up")
                    watcher.say(f"{died}; restarting it")
                    running.append(start(ended.number, ended.restarts + 1))
                elif kind == STOPPED:
                    watcher.say(f"worker {ended.number} was stopped by a signal")
    except BaseException:
        _stop_processes(running)
        with suppress(Exception):
            watcher.poll()
        raise


def _outcome(ended: _Process) -> tuple[str, BaseException | None]:
    """How a worker process ended: what it sent, or FAILED without an error when it was killed."""
    with suppress(EOFError, OSError):
        if ended.outcome.poll():
            return ended.outcome.recv()
    return FAILED, None


def _stop_processes(running: list[_Process]) -> None:
    """Ask each worker to stop (it ends its trial at its next epoch), wait for them, kill what is left."""
    for each in running:
        with suppress(ProcessLookupError):
            os.kill(each.process.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_SECONDS
    try:
        for each in running:
            each.process.join(max(0.0, deadline - time.monotonic()))
    finally:  # also when a second Ctrl-C cuts the wait short
        for each in running:
            if each.process.is_alive():
                each.process.kill()
                each.process.join()


@contextmanager
def _children_ignore_signals() -> Iterator[None]:
    """Workers start with SIGINT and SIGTERM blocked and ignored (both inherited) until they can stop cleanly.

    Blocked, a signal stays pending (here and in the worker) rather than being lost; each worker
    unblocks once its handler is in place.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # this thread's mask, which the worker inherits
    # dispositions are the process's, set from its main thread only; blocked is enough for a worker that studies
    # side by side start from other threads
    main = threading.current_thread() is threading.main_thread()
    previous = {each: signal.signal(each, signal.SIG_IGN) for each in STOP_SIGNALS} if main else {}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, signal.SIG_DFL if handler is None else handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _process_main(work: Work, order: Any, number: int, outcome: Connection) -> None:
    """A worker process: run the worker, then tell the driver how it ended."""
    _stop_with_parent()
    error: BaseException | None = None
    with stop_on_signals():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a signal that came meanwhile arrives now
        try:
            work(order, number, _stop)
            kind = STOPPED if _stop.is_set() else DONE
        except KeyboardInterrupt:
            kind = STOPPED
        except BaseException as raised:
            kind, error = FAILED, raised
    try:
        pickle.dumps(error)
    except Exception:
        error = RuntimeError(f"{type(error).__name__}: {error}")
    with suppress(OSError):  # the driver is gone
        outcome.send((kind, error))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip tearing down torch, MLflow and Optuna: collecting that heap took 5 s on a busy 2-core machine


def _stop_with_parent() -> None:
    """On Linux, a SIGTERM when the driver dies: an orphan worker ends its trial instead of running on unseen."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    set_parent_death_signal = 1  # PR_SET_PDEATHSIG
    ctypes.CDLL(None, use_errno=True).prctl(set_parent_death_signal, signal.SIGTERM)
    if os.getppid() == 1:  # the driver died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


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
            _raise_if_stopping()
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                _raise_if_stopping()
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
    _stop.clear()  # Ray reuses worker processes: an earlier task may have been stopped in this one
    with stop_on_signals():
        try:
            work(order, number, _stop)
        except KeyboardInterrupt:
            return STOPPED
    return STOPPED if _stop.is_set() else DONE


Executor = Local | RayCluster


@contextmanager
def connect(address: str | None) -> Iterator[Executor]:
    """The executor for `--ray-address`: local without one, else connected to the Ray cluster until the call ends.

    An unreachable cluster is a ConfigError before anything is created. The moonvae package goes
    to the cluster with the job (Ray's runtime environment), so its machines need no checkout,
    only the same Python packages.
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
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
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
