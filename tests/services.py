"""Throwaway services for the end-to-end tests: a PostgreSQL cluster, an `mlflow server`, a Ray head.

Each starts on free loopback ports in a temporary folder and is always stopped, so
the machine's own clusters are left alone. Where the software is missing the test is
skipped with a note; on CI (env CI set) that is a failure. conftest.py makes fixtures of them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, running_server

READY_SECONDS = 120  # for a cluster to start; generous for a busy CI runner
STOP_SECONDS = 60  # Ray drains a node for up to 30 s on SIGTERM
# For the throwaway Ray cluster and its drivers: once a local ray.init() has left a token in
# ~/.ray/auth_token, `ray start` turns token authentication on, and drivers are refused.
RAY_NO_AUTH = {"RAY_AUTH_MODE": "disabled"}


def unavailable(reason: str) -> None:
    """Skip where the software is simply not installed; on CI that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries Debian installed, else those on PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parents[1].name))
    found = debian[-1] if debian else shutil.which("pg_ctl")
    return Path(found).parent if found else None


@dataclass(frozen=True)
class Postgres:
    """A throwaway PostgreSQL cluster: its first database's URL, more databases, and a restart."""

    url: str  # postgresql://postgres@127.0.0.1:PORT/moonvae_study, as users type it: psycopg 3
    port: int
    pg: Callable[..., None]  # runs one of the cluster's binaries as its owner
    data: Path
    log: Path
    options: str  # the server's command line, for pg_ctl start

    def database(self, name: str) -> str:
        """A new empty database on the cluster: its URL."""
        _sql(self.port, f"CREATE DATABASE {name}")
        return self.url.rpartition("/")[0] + f"/{name}"

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every session is ended, the server is away for a moment.

        With its log file again: without one the new server would hold pg_ctl's output pipe open.
        """
        folders = ["-D", str(self.data), "-l", str(self.log)]
        self.pg("pg_ctl", *folders, "-m", "fast", "-w", "-t", str(READY_SECONDS), "restart")

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The server stopped (`pg_ctl stop -m fast`) for a while, then started again for the tests after."""
        self.pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        try:
            yield
        finally:
            folders = ["-D", str(self.data), "-l", str(self.log), "-o", self.options]
            self.pg("pg_ctl", *folders, "-w", "-t", str(READY_SECONDS), "start")


def _sql(port: int, statement: str) -> None:
    """CREATE and DROP DATABASE refuse to run inside a transaction."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres") as connection:
        connection.autocommit = True
        connection.execute(statement)


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """A throwaway cluster (Debian's `postgresql` binaries) with a database; stopped and removed afterwards.

    PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
    """
    binaries = postgres_bin()
    if binaries is None or not (binaries / "initdb").exists():
        unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no postgres user to run PostgreSQL as")
    as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
    folder = Path(tempfile.mkdtemp(prefix="moonvae-postgres-"))
    if owner:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data, log, port = folder / "data", folder / "postgres.log", free_port()

    def pg(*args: str) -> None:
        done = subprocess.run([str(binaries / args[0]), *args[1:]], capture_output=True, text=True, **as_owner)
        if done.returncode != 0:
            details = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()[-2000:]}\n{details}")

    pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "--encoding=UTF8")
    # many worker processes each hold a connection pool: room for more than the default 100 clients
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=500"
    try:
        pg("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(READY_SECONDS), "start")
        _sql(port, "CREATE DATABASE moonvae_study")
        yield Postgres(f"postgresql://postgres@127.0.0.1:{port}/moonvae_study", port, pg, data, log, options)
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def tracking_server(folder: Path, port: int | None = None) -> Iterator[str]:
    """`mlflow server` on sqlite with proxied artifacts (no --default-artifact-root), on a free loopback port.

    Given the folder and port of one that was stopped, it starts again on the same store and artifacts.
    """
    folder.mkdir(exist_ok=True)
    port = port or free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(command, folder, port, "/health") as url:
        yield url


@dataclass(frozen=True)
class RayHead:
    address: str  # the head's, 127.0.0.1:PORT: a driver on this machine joins the cluster itself
    pid: int  # of `ray start --block`, whose raylet starts the worker processes

    def tasks(self, name: str) -> list[int]:
        """Pids of this cluster's processes running task `name` (titled `ray::NAME`); other clusters' are left out."""
        return [pid for pid in processes_named(f"ray::{name}") if _parent(_parent(pid)) == self.pid]


@contextmanager
def ray_head(cpus: int = 2) -> Iterator[RayHead]:
    """A one-node Ray cluster (`ray start --head --block`) on free loopback ports.

    Started without PYTHONPATH, so its workers get moonvae the way a cluster without a
    checkout does: from the job's runtime environment. Stopped through its own process
    (SIGTERM drains the node, then its process group is killed): `ray stop` would stop
    every Ray cluster on the machine.
    """
    ray = Path(sys.executable).parent / "ray"
    if not ray.exists():
        unavailable("Ray is not installed (pip install -e '.[ray]')")
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    gcs, client, dashboard, agent = (free_port() for _ in range(4))
    command = [str(ray), "start", "--head", "--block", "--num-cpus", str(cpus), "--temp-dir", str(folder)]
    command += ["--node-ip-address", "127.0.0.1", "--port", str(gcs), "--ray-client-server-port", str(client)]
    command += ["--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent)]
    command += ["--include-dashboard", "false", "--disable-usage-stats"]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "RAY_ADDRESS")} | RAY_NO_AUTH
    log = folder / "head.log"
    with log.open("w") as output:
        head = subprocess.Popen(
            command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_SECONDS
        while "Ray runtime started" not in log.read_text() or not _accepts(gcs):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not start (exit {head.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield RayHead(f"127.0.0.1:{gcs}", head.pid)
    finally:
        head.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            head.wait(timeout=STOP_SECONDS)
        with suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # anything left of it: its group is its own
        head.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def processes_named(title: str) -> list[int]:
    """Pids of this machine's processes whose command line is `title` (as `ps` shows a Ray task: `ray::NAME`)."""
    found = []
    for entry in Path("/proc").iterdir():
        with suppress(OSError):
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().split(b"\0")[0].decode().strip() == title:
                found.append(int(entry.name))
    return found


def _parent(pid: int) -> int:
    """The parent's pid, 0 once the process is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0
