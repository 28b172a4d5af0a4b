"""The architecture as a test: subpackages in layers, imports pointing down only, MLflow and Optuna in their place.

Layers, lowest first: the configs and the metric vocabulary; core (pure torch); sampling;
serving; tracking; tuning; analysis; the CLI. A module may import its own layer and those
below, never one above. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moonvae"
LAYERS = ("config", "core", "sampling", "serving", "tracking", "tuning", "analysis", "cli")
TOP = {"__init__": "config", "config": "config", "metrics": "config", "cli": "cli", "__main__": "cli"}
COMPAT = {"pyfunc": "serving"}  # moonvae.pyfunc: the import path of models logged by 0.1
OWNERS = {"mlflow": {"tracking", "serving"}, "optuna": {"tuning"}}  # who may import these libraries
MAX_LINES = 400


def layer_of(module: str) -> str:
    """The layer of a dotted moonvae module name (`moonvae.tuning.trials` -> tuning)."""
    parts = module.split(".")[1:] or ["__init__"]
    if len(parts) > 1 or parts[0] in LAYERS[1:-1]:
        return parts[0]
    return TOP.get(parts[0]) or COMPAT[parts[0]]


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def dotted(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(relative.parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every module the file imports, at the top or inside a function (`from moonvae.x import y` -> both)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names if node.module.startswith("moonvae")}
    return found


def internal(name: str) -> str | None:
    """The moonvae module an import names, if it names one (a module, or a name defined in one)."""
    if not name.startswith("moonvae"):
        return None
    parts = name.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
            return ".".join(parts)
        parts.pop()
    return None


@pytest.mark.parametrize("path", modules(), ids=lambda path: dotted(path))
def test_imports_point_down_only(path: Path):
    own = LAYERS.index(layer_of(dotted(path)))
    upward = [name for name in imports(path) if (target := internal(name)) and LAYERS.index(layer_of(target)) > own]
    assert not upward, f"{dotted(path)} ({layer_of(dotted(path))}) imports from higher layers: {sorted(upward)}"


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_library_is_imported_by_its_owners_only(library: str):
    strays = {
        dotted(path)
        for path in modules()
        if any(name == library or name.startswith(f"{library}.") for name in imports(path))
        and layer_of(dotted(path)) not in OWNERS[library]
    }
    assert not strays, f"{library} imported outside {sorted(OWNERS[library])}: {sorted(strays)}"


def test_no_module_is_over_the_line_budget():
    long = {dotted(path): n for path in modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path):
    """The rule itself: core importing tracking is found, tracking importing core is not."""
    assert LAYERS.index(layer_of(internal("moonvae.tracking.runs.client"))) > LAYERS.index(
        layer_of("moonvae.core.data")
    )
    assert internal("moonvae.core.models.VAE") == "moonvae.core.models"
    assert internal("mlflow.pyfunc") is None
