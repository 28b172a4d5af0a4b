"""Which code a run ran: the package version, and the git commit of the checkout the package was imported from.

MLflow records a commit only for `mlflow run` or a script inside a repository: it looks around
`sys.argv[0]`, which for `moonvae tune` is a console script in the virtualenv. Here the
repository is looked for around the package itself, so every run records it however it
was started. Workers on other machines may run a copy of the package outside any checkout
(Ray ships it); the driver hands them its own lineage through the environment.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import moonvae
from moonvae.tracking import names

PACKAGE_DIR = Path(moonvae.__file__).resolve().parent
LINEAGE_ENV = "MOONVAE_LINEAGE"  # the driver's lineage tags as JSON, for workers outside a checkout
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own key: the UI links the run to its commit


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def lineage() -> dict[str, str]:
    """`moonvae.version` always; the commit and `moonvae.git_dirty` when the package sits in a git checkout.

    Dirty means uncommitted changes to tracked files: the commit alone does not say what ran.
    Computed once per process: asking git for every trial's run would cost more than logging it.
    """
    if os.environ.get(LINEAGE_ENV):
        return json.loads(os.environ[LINEAGE_ENV])
    tags = {names.VERSION_TAG: moonvae.__version__}
    commit = _git("rev-parse", "HEAD")
    if commit:
        changes = _git("status", "--porcelain", "--untracked-files=no")
        tags[GIT_COMMIT_TAG] = commit
        tags[names.GIT_DIRTY_TAG] = "unknown" if changes is None else str(bool(changes)).lower()
    return tags


def environment() -> dict[str, str]:
    """What a worker process needs to record this process's lineage."""
    return {LINEAGE_ENV: json.dumps(lineage())}
