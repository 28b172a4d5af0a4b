"""What installs moonvae says the same everywhere: conda.yaml asks pip for exactly pyproject.toml's dependencies."""

from __future__ import annotations

import tomllib

import yaml
from conftest import ROOT


def test_conda_env_pins_what_pyproject_pins():
    """One set of requirements (torch pinned to the CPU wheel among them), whichever way users install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(entry["pip"] for entry in conda if isinstance(entry, dict) and "pip" in entry)
    assert sorted(pip) == sorted(requirement.split("#")[0].strip() for requirement in project)
