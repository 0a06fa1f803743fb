"""No Python eval/exec/compile of text anywhere in the project's packages, read from
their syntax trees: text a model or a data file wrote must never run. Method calls
of the same name (mx.eval, a torch module's .eval(), re.compile) are not the builtins."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("reflex_app", "reflex_core", "reflex_mlx", "reflex_torch", "convert", "bench")
BUILTINS = {"eval", "exec", "compile", "__import__"}
# An assembler that evaluates its operands; the project assembles with its own parser.
FORBIDDEN_IMPORTS = {"bronzebeard"}


def findings(source: str, name: str = "<text>") -> list[str]:
    """Where a source calls or reaches the evaluating builtins, or imports a forbidden module."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Name) and node.id in BUILTINS and node.id != "compile":
            found.append(f"{where}: {node.id}")  # called, passed on or aliased
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "compile":
            found.append(f"{where}: compile()")
        elif isinstance(node, ast.Attribute) and node.attr in BUILTINS:
            if isinstance(node.value, ast.Name) and node.value.id in ("builtins", "__builtins__"):
                found.append(f"{where}: {node.value.id}.{node.attr}")
            elif node.attr == "__import__":
                found.append(f"{where}: .__import__")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            if any(isinstance(a, ast.Constant) and a.value in BUILTINS for a in node.args[1:2]):
                found.append(f"{where}: getattr(..., {node.args[1].value!r})")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] in FORBIDDEN_IMPORTS for m in modules):
                found.append(f"{where}: import {', '.join(modules)}")
    return found


def test_the_scan_sees_what_it_looks_for():
    bad = (
        "import bronzebeard.asm\nfrom bronzebeard import asm\nx = eval(text)\nexec(text)\n"
        "compile(text, 'f', 'exec')\n__import__('os')\nbuiltins.eval(text)\nrun = eval\n"
        "getattr(builtins, 'exec')(text)\n"
    )
    assert len(findings(bad)) == 9, findings(bad)
    fine = "import mlx.core as mx\nmx.eval(a)\nmodel.eval()\nre.compile('x')\nself.eval_tasks = 1\n"
    assert findings(fine) == []


def test_no_package_evaluates_text():
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 40 and any(p.name == "assembler.py" for p in files)
    found = [f for p in files for f in findings(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == [], "\n".join(found)
