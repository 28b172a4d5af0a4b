"""No trial without a heartbeat: a trial whose worker died is noticed, failed and queued again, at any instant.

Optuna's RDB storage fails as stale a RUNNING trial whose last heartbeat is older than
the grace period, but skips a trial that has no heartbeat at all: a worker killed
after asking a trial and before its first heartbeat left it RUNNING forever, and
every worker waiting for the study's last trials waited with it. Two rules close that:
1. A worker records a trial's first heartbeat as soon as it has asked it, and one
   thread (`Heartbeats`) then beats every trial the worker holds until it is told.
2. Whoever looks for stale trials gives a RUNNING trial without a heartbeat one, on
   the database's clock (`Storage`): unless its worker beats it, it is stale after
   the grace period like any other. This covers the instant between Optuna's insert
   of the trial and its first heartbeat, where a worker can die too, and trials left
   by earlier versions. Its start time cannot decide instead: that is the asking
   machine's clock, and heartbeats are the database's.
A trial that goes stale is failed by Optuna and queued again with the same parameters
(trials.on_stale_trial), by the first living worker to look: each looks as it asks, and
its heartbeat thread every WATCH_SECONDS, so a worker in the middle of a round does not
leave a dead one's trials waiting until its round ends. A storage that is briefly away
(a PostgreSQL restart) is waited for rather than failed: SQLAlchemy's pool_pre_ping
replaces the connections the restart closed, and a new connection is retried for up to
the grace period.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from optuna.storages import RDBStorage
from optuna.storages._rdb.models import TrialHeartbeatModel, TrialModel  # the tables heartbeats live in
from optuna.trial import TrialState
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from moonvae.tuning.executor import first_line

# Read from the environment too, since workers run in other processes (tests shorten them to seconds).
HEARTBEAT_SECONDS = int(os.environ.get("MOONVAE_HEARTBEAT_SECONDS", "30"))
GRACE_SECONDS = int(os.environ.get("MOONVAE_GRACE_SECONDS", "120"))  # no heartbeat for this long: a dead worker
WATCH_SECONDS = 5  # at most between a worker's looks for stale trials: two small queries, so a trial goes stale on time
CONNECT_EVERY_SECONDS = 1.0  # between attempts to reach a storage server that went away


def stale_reason() -> str:
    """Why a stale trial failed, as its run and the console say it."""
    return f"its worker stopped (no heartbeat for {GRACE_SECONDS} s)"


class Beat(NamedTuple):
    """A RUNNING trial's last heartbeat, on the database's clock, and its age (None: no heartbeat yet)."""

    number: int
    at: datetime | None
    age: float | None


class Storage(RDBStorage):
    """Optuna's RDB storage, where a RUNNING trial without a heartbeat gets one when stale trials are looked for.

    Against a database server, a connection the server closed is replaced before use
    (pool_pre_ping) and a server that is away is waited for, up to the grace period.
    """

    def __init__(self, url: str, on_stale_trial: Callable[..., None] | None = None) -> None:
        server = not url.startswith("sqlite")
        super().__init__(
            url,
            engine_kwargs={"pool_pre_ping": True} if server else None,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=on_stale_trial,
        )
        self._away = False  # the server refused for longer than GRACE_SECONDS, and has not answered since
        if server:  # after opening: a wrong address still fails at once
            event.listen(self.engine, "do_connect", self._connect)

    def _connect(self, dialect: Any, record: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
        """SQLAlchemy's do_connect hook: a server that refuses is retried for up to GRACE_SECONDS, once an outage.

        Once a wait has run out, the next connections try once until one succeeds: a worker
        whose storage is gone stops in seconds, not a grace period per call.
        """
        deadline = time.monotonic() + (0 if self._away else GRACE_SECONDS)
        while True:
            try:
                connection = dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if time.monotonic() >= deadline:
                    self._away = True
                    raise
                time.sleep(CONNECT_EVERY_SECONDS)
            else:
                self._away = False
                return connection

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        for trial_id in self._uncovered(study_id):
            self.record_heartbeat(trial_id)
        return super()._get_stale_trial_ids(study_id)

    def _uncovered(self, study_id: int) -> list[int]:
        """The study's RUNNING trials that have no heartbeat yet."""
        query = (
            select(TrialModel.trial_id)
            .outerjoin(TrialHeartbeatModel, TrialHeartbeatModel.trial_id == TrialModel.trial_id)
            .where(TrialModel.study_id == study_id, TrialModel.state == TrialState.RUNNING)
            .where(TrialHeartbeatModel.trial_heartbeat_id.is_(None))
        )
        with Session(self.engine) as session:
            return list(session.scalars(query))

    def heartbeats(self, study_id: int) -> dict[int, Beat]:
        """Each RUNNING trial's last heartbeat, by trial id."""
        query = (
            select(TrialModel.trial_id, TrialModel.number, TrialHeartbeatModel.heartbeat)
            .outerjoin(TrialHeartbeatModel, TrialHeartbeatModel.trial_id == TrialModel.trial_id)
            .where(TrialModel.study_id == study_id, TrialModel.state == TrialState.RUNNING)
        )
        with Session(self.engine) as session:
            now = session.execute(select(func.now())).scalar_one().replace(tzinfo=None)  # as Optuna compares them
            rows = session.execute(query).all()
        return {
            trial_id: Beat(number, beat, None if beat is None else (now - beat).total_seconds())
            for trial_id, number, beat in rows
        }


class Heartbeats:
    """The heartbeats of every trial this worker holds: one thread, one write per trial every HEARTBEAT_SECONDS.

    Every WATCH_SECONDS (or heartbeat, if sooner) the thread calls `watch` (failing the study's
    stale trials), so a dead worker's trial is failed at most that long after its grace. A heartbeat
    that cannot be written (the storage is away) is tried again at the next beat; one line
    says so. Optuna's own heartbeat thread would die at the first error, and its trial
    would be failed while it trains.
    """

    def __init__(self, storage: RDBStorage, watch: Callable[[], object] | None = None) -> None:
        self._storage = storage
        self._watch = watch
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeats", daemon=True)
        self._failing = False

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def hold(self, trial_id: int) -> None:
        """Beat for a trial from now on, starting with one heartbeat at once."""
        with self._lock:
            self._held.add(trial_id)
        self._beat([trial_id])

    def release(self, trial_id: int) -> None:
        with self._lock:
            self._held.discard(trial_id)

    def holds(self, trial_id: int) -> bool:
        with self._lock:
            return trial_id in self._held

    def _loop(self) -> None:
        due = time.monotonic() + HEARTBEAT_SECONDS
        while not self._stop.wait(min(HEARTBEAT_SECONDS, WATCH_SECONDS)):
            held: list[int] = []
            if time.monotonic() >= due:
                due = max(due + HEARTBEAT_SECONDS, time.monotonic())  # late (a slow storage): no burst of beats
                with self._lock:
                    held = sorted(self._held)
            self._beat(held, self._watch)

    def _beat(self, trial_ids: list[int], watch: Callable[[], object] | None = None) -> None:
        try:
            for trial_id in trial_ids:
                self._storage.record_heartbeat(trial_id)
            if watch is not None:
                watch()
        except Exception as error:  # the storage is away: beat again next time, say so once
            if not self._failing:
                reason = first_line(error)
                print(f"heartbeats not recorded ({reason}); trying again every {HEARTBEAT_SECONDS} s", file=sys.stderr)
            self._failing = True
            return
        self._failing = False
