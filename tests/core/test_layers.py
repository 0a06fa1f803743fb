"""No import points upward, read from every module's syntax tree (module level and inside
functions, relative imports resolved, `importlib.import_module` of a literal name):

    reflex_app -> reflex_mlx, reflex_torch, convert (-> reflex_mlx) -> reflex_core

bench/ measures the layers below the application and imports none of it. reflex_core
imports neither framework, reflex_mlx and convert never torch, reflex_torch never mlx.
The backend registry (reflex_core/backends.py) reaches a backend through the names of
pyproject.toml's entry points, strings that are no import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# package -> the project's packages it may import (itself always)
MAY_IMPORT = {
    "reflex_core": set(),
    "reflex_mlx": {"reflex_core"},
    "reflex_torch": {"reflex_core"},
    "convert": {"reflex_core", "reflex_mlx"},
    "reflex_app": {"reflex_core", "reflex_mlx", "reflex_torch", "convert"},
    "bench": {"reflex_core", "reflex_mlx", "reflex_torch", "convert"},
}
MLX = {"mlx", "mlx_lm"}
TORCH = {"torch", "torchvision", "transformers", "accelerate"}
# package -> the frameworks it must never import
NEVER = {"reflex_core": MLX | TORCH, "reflex_mlx": TORCH, "convert": TORCH, "reflex_torch": MLX}


def imported(source: str, package: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a module's source, in line order; `package` is
    the dotted name of the package holding it (reflex_app.cli), against which relative
    imports resolve."""
    parts = package.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + 1]
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            else:
                found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def package_name(path: Path) -> str:
    """reflex_app/cli/run.py and reflex_app/cli/__init__.py -> reflex_app.cli"""
    return ".".join(path.relative_to(ROOT).parent.parts)


def upward(layer: str, source: str, package: str) -> list[str]:
    """Where a module (of `package`, in the top-level package `layer`) imports a layer above
    its own, or a framework it must not."""
    bad = []
    for line, target in imported(source, package):
        top = target.split(".")[0]
        above = top in MAY_IMPORT and top != layer and top not in MAY_IMPORT[layer]
        if above or top in NEVER.get(layer, ()):
            bad.append(f"{line}: {layer} imports {target}")
    return bad


def test_the_scan_sees_every_kind_of_import():
    source = (
        "import reflex_app.api\nfrom reflex_torch import load\n"
        "def later():\n    from convert.convert import main\n    import torch.nn as nn\n"
        "from . import api\nfrom ..cli import main\n"
        "importlib.import_module('bench.common')\nimport_module('mlx.core')\n"
    )
    # in a module of reflex_mlx.cli, `from . import api` and `from ..cli import main` both name reflex_mlx.cli
    targets = ["reflex_app.api", "reflex_torch", "convert.convert", "torch.nn", "reflex_mlx.cli"]
    targets += ["reflex_mlx.cli", "bench.common", "mlx.core"]
    assert [target for _, target in imported(source, "reflex_mlx.cli")] == targets
    assert upward("reflex_core", source, "reflex_mlx.cli") == [
        f"{line}: reflex_core imports {target}" for line, target in zip((1, 2, 4, 5, 6, 7, 8, 9), targets)
    ]
    assert upward("reflex_app", source, "reflex_app.cli") == ["8: reflex_app imports bench.common"]
    assert upward("reflex_mlx", source, "reflex_mlx.cli") == [
        "1: reflex_mlx imports reflex_app.api",
        "2: reflex_mlx imports reflex_torch",
        "4: reflex_mlx imports convert.convert",
        "5: reflex_mlx imports torch.nn",
        "8: reflex_mlx imports bench.common",
    ]
    assert upward("bench", "from reflex_app.ui import Demo\nimport torch\n", "bench") == [
        "1: bench imports reflex_app.ui"
    ]


def test_no_import_points_upward():
    files = {package: sorted((ROOT / package).rglob("*.py")) for package in MAY_IMPORT}
    assert all(files.values()) and any(p.name == "api.py" for p in files["reflex_app"])
    found = [
        f"{path.relative_to(ROOT)}:{bad}"
        for package, paths in files.items()
        for path in paths
        for bad in upward(package, path.read_text(), package_name(path))
    ]
    assert found == [], "\n".join(found)
