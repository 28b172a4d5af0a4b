"""A study whose worker SIGKILLs itself once, at a chosen instant of its first round: the fault suite's victim.

Run as `python tests/fault_workers.py INSTANT FOLDER STORAGE STUDY [RAY_ADDRESS]` (test_faults.py
does, with the tracking URI and short heartbeats in the environment): the study of
N_TRIALS trials, two workers of rounds of K, on this machine's processes or on Ray,
whose worker 0 dies at INSTANT. A process of its own, so Ray's driver state never
lives in pytest's.

The tuner's own worker (search.work) in every respect, but in the victim (worker 0) a
few of moonvae's functions are wrapped so that the process kills itself, as the
out-of-memory killer or a preempted machine would, at one of these instants:
  asked          just after the last ask of its round, before that trial's first heartbeat
  creating runs  while the round's runs are created (three of eight made)
  training       halfway through the round's epochs
  logging        while the round's results are logged (the first trial told, the second half logged)
The other worker waits until the victim has asked its round, so each round holds K
trials whatever the timing. A mark file keeps the restarted victim (the executor
restarts it; Ray retries its task) from being killed again; it holds the time of the kill.
Ray workers get this module by value (the cluster has no checkout of the tests).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTANTS = ("asked", "creating runs", "training", "logging")
N_TRIALS, K, EPOCHS = 16, 8, 10
FIXED = {"n_samples": 200, "max_epochs": EPOCHS, "patience": EPOCHS}  # no early stop: every finished run has EPOCHS
VICTIM = 0
ROUND_SECONDS = 600  # the other worker's longest wait for the victim's round


@dataclass(frozen=True)
class KillAt:
    instant: str
    folder: str  # the marks: `round` once the victim asked its round, `killed` (the time) once it killed itself

    def __call__(self, order: Any, number: int, stop: threading.Event) -> None:
        from moonvae.tuning import search

        folder = Path(self.folder)
        if number != VICTIM:
            deadline = time.monotonic() + ROUND_SECONDS
            while not (folder / "round").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            search.work(order, number, stop)
        elif (folder / "killed").exists():
            search.work(order, number, stop)  # restarted: a worker like any other
        else:
            with _armed(self.instant, folder, order.max_epochs, order.trials_at_once):
                search.work(order, number, stop)


def _kill(folder: Path) -> None:
    (folder / "round").touch()
    (folder / "killed").write_text(str(time.time()))
    os.kill(os.getpid(), signal.SIGKILL)


def _counting(real: Callable[..., Any], at: int, before: bool, folder: Path) -> Callable[..., Any]:
    """`real`, but the process kills itself at its `at`-th call, before or after it."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if before and calls == at:
            _kill(folder)
        result = real(*args, **kwargs)
        if not before and calls == at:
            _kill(folder)
        return result

    return wrapper


@contextmanager
def _armed(instant: str, folder: Path, max_epochs: int, round_size: int) -> Iterator[None]:
    import optuna

    from moonvae.core import batched
    from moonvae.tracking import runs
    from moonvae.tuning import asking

    patched: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, wrapper)

    real_next_trials = asking.next_trials

    def next_trials(site: Any) -> Any:
        asked = real_next_trials(site)
        (folder / "round").touch()
        return asked

    patch(asking, "next_trials", next_trials)
    if instant == "asked":
        patch(optuna.study.Study, "ask", _counting(optuna.study.Study.ask, round_size, False, folder))
    elif instant == "creating runs":
        patch(runs, "start_run", _counting(runs.start_run, 4, True, folder))
    elif instant == "training":
        real_fit_batch = batched.fit_batch

        def fit_batch(configs: Any, train: Any, val: Any, on_epoch: Any, **kwargs: Any) -> Any:
            def each_epoch(index: int, metrics: Any) -> None:
                on_epoch(index, metrics)
                if metrics.epoch == max_epochs // 2:
                    _kill(folder)

            return real_fit_batch(configs, train, val, each_epoch, **kwargs)

        patch(batched, "fit_batch", fit_batch)
    elif instant == "logging":
        patch(runs, "log_png", _counting(runs.log_png, 3, True, folder))  # two PNGs a trial: the second's first
    else:
        raise ValueError(f"instant must be one of {', '.join(INSTANTS)}, got {instant!r}")
    try:
        yield
    finally:  # Ray reuses a worker process for later tasks
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def main() -> None:
    import fault_workers  # this module by its name, as the workers import it (not as __main__)

    from moonvae.tracking import runs
    from moonvae.tuning import cluster, search

    instant, folder, storage, name, *address = sys.argv[1:]
    with cluster.connect(address[0] if address else None) as runner:
        if address:
            from ray import cloudpickle

            cloudpickle.register_pickle_by_value(fault_workers)  # the cluster has no checkout of the tests
        search.work = fault_workers.KillAt(instant, folder)
        plan = search.plan(
            "vae", "probabilistic", N_TRIALS, study_base=name, storage=storage, fixed=FIXED, workers=2,
            trials_at_once=K, runner=runner,
        )  # fmt: skip
        search.run(plan, runs.client())


if __name__ == "__main__":
    main()
