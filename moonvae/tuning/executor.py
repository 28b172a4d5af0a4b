"""What every executor of a study's workers shares: the work it runs, the watcher it reports to, how workers end.

A worker joins its study through the shared Optuna storage and tracking store and
works until the study holds its trials, so it needs nothing from the driver but its
order (plain values) and its environment (the storage URL, which may hold a password,
travels by environment, never as an argument). The driver starts the workers (in this
process or in processes of their own: processes.py; as tasks on a Ray cluster:
cluster.py), calls `watcher.poll()` every second to show progress, and
- restarts a worker whose process died (on Ray, the task is retried); the trials it
  held lose their heartbeat, are failed and queued again (heartbeats.py);
- on Ctrl-C or SIGTERM stops every worker at its next epoch, so their runs end KILLED
  and their trials FAIL, waits for them, then raises KeyboardInterrupt (signals.py);
- stops the others when one raises, and raises that error.
Nothing here knows Optuna or MLflow: `work` and the watcher bring them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

POLL_SECONDS = 1.0  # between progress updates while workers run
STOP_SECONDS = 60.0  # a stopped worker ends its trial at its next epoch; one still running after this is killed
MAX_RETRIES = 3  # restarts of a worker whose process died (on Ray: the task's max_retries)
DONE, STOPPED, CRASHED = "done", "stopped", "crashed"  # how a worker ended: crashed = raised, or was killed

Work = Callable[[Any, int, threading.Event], None]  # work(order, worker number, stop): pickles by name


class Watcher(Protocol):
    """The driver's view of the study while its workers run."""

    def poll(self) -> None: ...  # called every POLL_SECONDS and once at the end

    def say(self, line: str) -> None: ...  # a line for the console, above the progress bar


class WorkerLost(RuntimeError):
    """A worker died more often than it may be restarted, or its cluster lost it."""


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


def first_line(error: BaseException) -> str:
    """An error in one line for the console: its message's first line, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
