"""Wall time of one study run by one worker, by threads, by worker processes, and by Ray tasks.

The probabilistic space at the study's default model for a fixed number of epochs (early
stopping off): its random draws depend on the seed and the trial number only, so every
mode below trains the very same trials, in a fresh sqlite tracking store and Optuna storage,
each worker (or thread) 8 trials at a time (`trials_at_once`, the default).
  one worker    workers=1, n_jobs=1: the trials one after another, in this process
  threads       n_jobs=2: two threads in this process, sharing one interpreter lock
  processes     workers=2: two spawned processes
  ray 1, ray 2  workers=1 and 2 as tasks on a one-node Ray cluster started here
Ray's start-up is timed in three parts: `ray start --head` until it answers, connecting
(moonvae's package uploaded as the job's runtime environment), and the round trip of two
empty tasks (Ray starting their worker processes). Each study includes starting its
workers (a spawned process or a Ray task imports torch, MLflow and Optuna first). The
modes take turns for --rounds rounds and each prints its fastest round and all of them:
on a machine shared with other work the fastest is the least disturbed.

Run: python bench/workers_speed.py [--trials 40] [--epochs 100] [--rounds 3]
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

from moonvae.tracking import runs
from moonvae.tuning import cluster, search

READY_SECONDS = 120


def study_seconds(name: str, trials: int, epochs: int, **options: object) -> float:
    fixed = {"max_epochs": epochs, "patience": epochs}
    plan = search.plan("vae", "probabilistic", trials, study_base=name, fixed=fixed, **options)
    start = time.perf_counter()
    search.run(plan, runs.client())
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


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
        while "Ray runtime started" not in log.read_text() or not accepts(gcs):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"127.0.0.1:{gcs}"  # this process joins the cluster as its driver
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=READY_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    startup: dict[str, float] = {}
    study: dict[str, list[float]] = {}  # wall seconds of the whole study, per round
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # short: Ray's socket paths must fit in 107 bytes
        folder = Path(tmp)
        os.chdir(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        os.environ["RAY_AUTH_MODE"] = "disabled"  # a throwaway cluster, whatever token ~/.ray holds
        start = time.perf_counter()
        with ray_head(folder) as address:
            startup["ray start --head"] = time.perf_counter() - start
            start = time.perf_counter()
            with cluster.connect(address) as ray_tasks:
                startup["connect"] = time.perf_counter() - start
                import ray

                start = time.perf_counter()
                ray.get([ray.remote(lambda: None).remote() for _ in range(2)])
                startup["first 2 empty tasks"] = time.perf_counter() - start
                modes: dict[str, dict[str, object]] = {
                    "one worker": {},
                    "threads (n_jobs=2)": {"n_jobs": 2},
                    "processes (workers=2)": {"workers": 2},
                    "ray (workers=1)": {"workers": 1, "runner": ray_tasks},
                    "ray (workers=2)": {"workers": 2, "runner": ray_tasks},
                }
                for round_ in range(args.rounds):
                    for number, (mode, options) in enumerate(modes.items()):
                        name = f"mode{number}-round{round_}"
                        study.setdefault(mode, []).append(study_seconds(name, args.trials, args.epochs, **options))
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.trials} trials of {args.epochs} epochs")
    for mode, rounds in study.items():
        each = ", ".join(f"{value:.1f}" for value in rounds)
        print(f"{mode:22s} {min(rounds):7.1f} s  ({min(rounds) / args.trials:.2f} s/trial; rounds: {each})")
    print("Ray's start-up: " + ", ".join(f"{step} {value:.1f} s" for step, value in startup.items()))


if __name__ == "__main__":
    main()
