"""Workers on this machine: one in this process, as `tune` always did, or each in a process of its own.

More than one run as processes, since threads share one interpreter lock and a 2-core
machine gained only 1.4x from them. The driver restarts a worker process that died
(a signal, the out-of-memory killer) up to MAX_RETRIES times.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from moonvae.tuning import signals
from moonvae.tuning.executor import (
    CRASHED,
    DONE,
    MAX_RETRIES,
    POLL_SECONDS,
    STOP_SECONDS,
    STOPPED,
    Watcher,
    Work,
    WorkerLost,
    environment,
)

_spawning = threading.Lock()  # studies side by side start their workers from several threads


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
        signals.raise_if_stopping()
        if workers == 1 and not self.own_processes:
            with environment(env), _polling(watcher):
                work(order, 0, signals.stop_flag())
            signals.raise_if_stopping()  # the worker saw the signal between trials and simply ended
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
    except BaseException:
        finished.set()
        poller.join()
        with suppress(Exception):  # the worker's error says more (a lost storage fails both)
            watcher.poll()
        raise
    finished.set()
    poller.join()
    watcher.poll()


@dataclass
class _Process:
    number: int
    process: multiprocessing.process.BaseProcess
    outcome: Connection  # what the worker sends as it ends: (DONE | STOPPED | CRASHED, error)
    restarts: int


def _run_processes(work: Work, order: Any, workers: int, env: dict[str, str], watcher: Watcher) -> None:
    context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and locks

    def start(number: int, restarts: int = 0) -> _Process:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_process_main, args=(work, order, number, sender), name=f"worker-{number}")
        with _spawning, environment(env), signals.children_ignore_signals():  # the environment is the process's
            process.start()
        sender.close()
        return _Process(number, process, receiver, restarts)

    running: list[_Process] = []
    try:
        for number in range(workers):
            running.append(start(number))
        while running:
            wait([each.process.sentinel for each in running], timeout=POLL_SECONDS)
            signals.raise_if_stopping()
            watcher.poll()
            for ended in [each for each in running if not each.process.is_alive()]:
                running.remove(ended)
                kind, error = _outcome(ended)
                if kind == CRASHED and error is not None:
                    raise error
                if kind == CRASHED:  # killed: a signal, the out-of-memory killer
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
    """How a worker process ended: what it sent, or CRASHED without an error when it was killed."""
    with suppress(EOFError, OSError):
        if ended.outcome.poll():
            return ended.outcome.recv()
    return CRASHED, None


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


def _process_main(work: Work, order: Any, number: int, outcome: Connection) -> None:
    """A worker process: run the worker, then tell the driver how it ended."""
    _stop_with_parent()
    error: BaseException | None = None
    stop = signals.stop_flag()
    with signals.stop_on_signals():
        signals.unblock()
        try:
            work(order, number, stop)
            kind = STOPPED if stop.is_set() else DONE
        except KeyboardInterrupt:
            kind = STOPPED
        except BaseException as raised:
            kind, error = CRASHED, raised
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
