"""Wall time of one study run by one worker, by threads, by worker processes, and by Ray tasks.

The probabilistic space at the study's default model for a fixed number of epochs (early
stopping off): its random draws depend on the seed and the trial number only, so every
mode below trains the very same trials, in a fresh sqlite tracking store and Optuna storage.
  one worker    workers=1, n_jobs=1: the trials one after another, in this process
  threads       n_jobs=2: two threads in this process, sharing one interpreter lock
  processes     workers=2: two spawned processes
  ray 1, ray 2  workers=1 and 2 as tasks on a one-node Ray cluster started here
Ray's start-up is timed in three parts: `ray start --head` until it answers, connecting
(moonvae's package uploaded as the job's runtime environment), and the round trip of two
empty tasks (Ray starting their worker processes). Each study includes starting its
workers (a spawned process or a Ray task imports torch, MLflow and Optuna first).

Run: python bench/workers_speed.py [--trials 40] [--epochs 100]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from moonvae import executor, search, tracking

READY_SECONDS = 120


def study_seconds(name: str, trials: int, epochs: int, **options: object) -> float:
    fixed = {"max_epochs": epochs, "patience": epochs}
    plan = search.plan("vae", "probabilistic", trials, study_base=name, fixed=fixed, **options)
    start = time.perf_counter()
    search.run(plan, tracking.client())
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def ray_head(folder: Path) -> Iterator[str]:
    """A throwaway one-node cluster, stopped through its own process (`ray stop` would stop every cluster here)."""
    gcs, client, dashboard, agent = (free_port() for _ in range(4))
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--temp-dir", str(folder)]
    command += ["--node-ip-address", "127.0.0.1", "--port", str(gcs), "--ray-client-server-port", str(client)]
    command += ["--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent)]
    command += ["--include-dashboard", "false", "--disable-usage-stats"]
    log = folder / "head.log"
    with log.open("w") as output:
        head = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_SECONDS
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"ray://127.0.0.1:{client}"
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=READY_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    study: dict[str, float] = {}  # wall seconds of the whole study
    startup: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # short: Ray's socket paths must fit in 107 bytes
        folder = Path(tmp)
        os.chdir(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        study["one worker"] = study_seconds("one", args.trials, args.epochs)
        study["threads (n_jobs=2)"] = study_seconds("threads", args.trials, args.epochs, n_jobs=2)
        study["processes (workers=2)"] = study_seconds("processes", args.trials, args.epochs, workers=2)
        start = time.perf_counter()
        with ray_head(folder) as address:
            startup["ray start --head"] = time.perf_counter() - start
            start = time.perf_counter()
            with executor.connect(address) as cluster:
                startup["connect"] = time.perf_counter() - start
                import ray

                start = time.perf_counter()
                ray.get([ray.remote(lambda: None).remote() for _ in range(2)])
                startup["first 2 empty tasks"] = time.perf_counter() - start
                for workers in (1, 2):
                    study[f"ray {workers} (workers={workers})"] = study_seconds(
                        f"ray-{workers}", args.trials, args.epochs, workers=workers, runner=cluster
                    )
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.trials} trials of {args.epochs} epochs")
    for mode, value in study.items():
        print(f"{mode:24s} {value:7.1f} s  ({value / args.trials:.2f} s/trial)")
    print("Ray's start-up: " + ", ".join(f"{step} {value:.1f} s" for step, value in startup.items()))


if __name__ == "__main__":
    main()
