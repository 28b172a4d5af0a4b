"""A worker for the executor's tests that imports nothing heavy, so spawned processes start in a blink."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def toy_work(order: dict, number: int, stop: threading.Event) -> None:
    """Leaves files saying what it did; dies, fails or works until stopped as `order` says."""
    folder = Path(order["folder"])
    (folder / f"started-{number}-{os.getpid()}").write_text(os.environ.get("MOONVAE_TOY", ""))
    if order.get("die_once") == number and not (folder / "died").exists():
        (folder / "died").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if order.get("fail") == number:
        raise ValueError(f"worker {number} broke")
    deadline = time.monotonic() + order.get("seconds", 0)
    while time.monotonic() < deadline:
        if stop.is_set():
            (folder / f"stopped-{number}").touch()
            return
        time.sleep(0.05)
    (folder / f"done-{number}").touch()
