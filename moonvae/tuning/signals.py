"""Stopping on SIGINT and SIGTERM: a flag that workers and the driver check where stopping is safe.

SIGTERM stops as cleanly as Ctrl-C: it is what Docker, Kubernetes, systemd, Ray and
`timeout` send. Worker processes start with both signals blocked and ignored, and take
them again once their own handler is in place.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_stop = threading.Event()  # set by SIGINT or SIGTERM (Ray's cancel calls SIGINT's handler) under stop_on_signals
_stopped_by: int | None = None  # the first of them


def stop_flag() -> threading.Event:
    """The flag the handlers set: workers check it at every epoch and before each trial."""
    return _stop


def stopped_by() -> int | None:
    """The signal (SIGINT or SIGTERM) that stopped this process, if one did: the exit code is 128 + it."""
    return _stopped_by


def raise_if_stopping() -> None:
    if _stop.is_set():
        raise KeyboardInterrupt


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


@contextmanager
def children_ignore_signals() -> Iterator[None]:
    """Workers start with SIGINT and SIGTERM blocked and ignored (both inherited) until they can stop cleanly.

    Blocked, a signal stays pending (here and in the worker) rather than being lost; each worker
    unblocks once its handler is in place (`unblock`).
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


def unblock() -> None:
    """In a worker whose handler is in place: a signal that came while it started arrives now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
