"""Open an HTML file in headless Chromium and read back the DOM after its scripts ran.

Chromium comes from Debian (`apt-get install chromium`, which `.ci/run` does); where it
is missing the test is skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium() -> str:
    """The chromium executable, or a skip that says how to get it."""
    found = shutil.which("chromium")
    if not found:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return found


def dump_dom(page: Path, budget_ms: int = 60_000) -> tuple[str, str]:
    """The page's DOM after load (virtual time lets its async scripts finish) and Chromium's log."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                Path(page).resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr
