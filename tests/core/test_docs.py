"""Every repository path and code name that README.md and docs/*.md cite exists.

What counts as a citation:
- a path that starts with a top-level folder of the repository (`reflex_mlx/quantize.py`,
  `docs/results/x.json`, `tests/mlx/test_fit.py::test_name`), in prose, backticks, code
  blocks or links; globs and `{a,b}` alternatives must match at least one file;
- a markdown link to a relative path (resolved from the citing file's folder);
- a bare `name.py` in backticks: some tracked file has that name;
- a dotted name whose first part is one of the packages (`reflex_mlx.quantize.DEFAULT_RECIPE`,
  `convert.calibrate.projected_seconds`): the module's source binds the name (else, for a lazy
  export, the module imports and has it); `python -m MODULE` names a module file;
  `from MODULE import a, b` in a code block resolves;
- `path.py: NAME` or `path::NAME`: the file names NAME;
- a CamelCase, UPPER_CASE or snake_case name alone in backticks (`FastReflex`, `DEFAULT_MAX_CYCLES`,
  `render_prompt`), and `module.name` or `Class.name` with a module or class of the repository
  (`spec.HUB_REPO`, `Machine.reset`): each part occurs as a word in the repository's source,
  outside README.md and docs/.
Paths outside the repository (`~/.cache/...`, `/tmp/...`, `../shared/...`) and placeholders
(`$OUT`, `DIR`, `<...>`) are not citations.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
PACKAGES = ("reflex_app", "reflex_core", "reflex_mlx", "reflex_torch", "convert", "bench")
FILE_EXTENSIONS = "py|md|json|jsonl|txt|log|pt|safetensors|sh|toml|yml|yaml|gguf|csv|png|svg|npz|cfg|ini|lock"
# Names the documents quote from other projects (or the shell): nothing in this repository defines them.
EXTERNAL = {"OMP_NUM_THREADS", "LoRALinear"}


@cache
def tracked() -> tuple[str, ...]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return tuple(p for p in out.splitlines() if (ROOT / p).exists())


@cache
def top_level() -> frozenset[str]:
    return frozenset(p.split("/", 1)[0] for p in tracked() if "/" in p)


@cache
def source_words() -> frozenset[str]:
    """Every identifier in the repository's code and build files (not in README.md or docs/)."""
    words: set[str] = set()
    for p in tracked():
        if p in ("README.md", SELF) or p.startswith("docs/") or not SOURCE_FILE.search(p):
            continue
        words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", (ROOT / p).read_text(errors="replace")))
    return frozenset(words)


@cache
def module_names() -> frozenset[str]:
    """The packages' module basenames (`spec` for reflex_core/spec.py), as the docs abbreviate them."""
    return frozenset(Path(p).stem for p in tracked() if p.split("/", 1)[0] in PACKAGES and p.endswith(".py"))


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def expand(path: str) -> list[str]:
    """`a/{x,y}.txt` -> [a/x.txt, a/y.txt]."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(",") for q in expand(path[: m.start()] + alt + path[m.end() :])]


def path_exists(path: str) -> bool:
    path = path.rstrip("/")
    for p in expand(path):
        if any(c in p for c in "*?["):
            if not any(fnmatch.fnmatch(t, p) or fnmatch.fnmatch(t, p + "/*") for t in tracked()):
                return False
        elif not (ROOT / p).exists():
            return False
    return True


def names_in(path: str, name: str) -> bool:
    text = (ROOT / path).read_text(errors="replace")
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def module_file(module_name: str) -> Path | None:
    base = ROOT / module_name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def defined(path: Path) -> dict[str, ast.AST | None]:
    """The names a module's top level binds (def, class, assignment, import), with their class bodies."""
    names: dict[str, ast.AST | None] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node if isinstance(node, ast.ClassDef) else None
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = None
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = None
    return names


def resolve_statically(parts: list[str]) -> bool:
    """Without importing (torch alone takes seconds): a module file, then names bound in it."""
    for cut in range(len(parts), 0, -1):
        path = module_file(".".join(parts[:cut]))
        if path is None:
            continue
        scope: dict[str, ast.AST | None] = defined(path)
        for attr in parts[cut:]:
            if attr not in scope:
                return False
            node = scope[attr]
            scope = {}
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        scope[item.name] = item if isinstance(item, ast.ClassDef) else None
                    elif isinstance(item, ast.Name) and isinstance(item.ctx, ast.Store):
                        scope[item.id] = None
                    elif isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                        scope[item.attr] = None
        return True
    return False


def resolve(dotted: str) -> str | None:
    """None when `pkg.module.attr...` resolves, else why not. Read statically first; a name the
    source does not bind plainly (a lazy module __getattr__) is looked up by importing."""
    parts = dotted.split(".")
    if resolve_statically(parts):
        return None
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                continue  # a shorter prefix is the module
            return f"importing {module_name}: {e}"
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return f"{'.'.join(parts[:cut])} has no {'.'.join(parts[cut:])}"
            obj = getattr(obj, attr)
        return None
    return "no such module"


SOURCE_FILE = re.compile(r"\.(py|toml|sh|yml|yaml)$|Makefile$")
BARE_PY = re.compile(r"[\w-]+\.py")
# FastReflex, DEFAULT_MAX_CYCLES, render_prompt: a name alone in backticks
IDENTIFIER = re.compile(r"[A-Z][a-z0-9]+[A-Z]\w*|[A-Z][A-Z0-9]*_[A-Z0-9_]+|[a-z][a-z0-9]+(_[a-z0-9]+)+")
# spec.HUB_REPO, Machine.reset: a module or class of the repository, then its attribute
SHORT_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
FILE_NAME = re.compile(rf"\.({FILE_EXTENSIONS})$")
PATH = re.compile(r"(?<![\w./~$-])((?:[\w.-]+/)+[\w.*?{},-]*(?:::\w+)?)")
DOTTED = re.compile(rf"(?<![\w./-])((?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+)(?![\w/-])")
BACKTICK = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH_NAME = re.compile(r"((?:[\w.-]+/)+[\w.-]+\.py): ([A-Za-z_]\w*)")


def check_path(raw: str, broken: list[str], where: str) -> None:
    path, _, name = raw.rstrip(".,;:)]").partition("::")
    first = path.split("/", 1)[0]
    if first not in top_level() or any(c in path for c in "<>$…") or "..." in path:
        return
    if re.search(r"(^|/)[A-Z]+(/|$)", path):  # a placeholder segment such as DIR or OUT
        return
    if not path_exists(path):
        broken.append(f"{where}: no such path {path}")
    elif name and not names_in(path, name):
        broken.append(f"{where}: {path} does not name {name}")


def check_line(line: str, where: str, broken: list[str], in_code: bool) -> None:
    for m in PATH.finditer(line):
        check_path(m.group(1), broken, where)
    for m in PATH_NAME.finditer(line):
        if m.group(1).split("/", 1)[0] in top_level() and (ROOT / m.group(1)).is_file():
            if not names_in(m.group(1), m.group(2)):
                broken.append(f"{where}: {m.group(1)} does not name {m.group(2)}")
    for m in DOTTED.finditer(line):  # in prose and code
        name = m.group(1)
        if FILE_NAME.search(name) or line[: m.start()].endswith("-m "):
            continue  # a file name such as convert.py; python -m is checked below
        why = resolve(name)
        if why:
            broken.append(f"{where}: {name}: {why}")
    for m in re.finditer(r"python -m ([\w.]+)", line):
        if m.group(1).split(".")[0] in PACKAGES and module_file(m.group(1)) is None:
            broken.append(f"{where}: python -m {m.group(1)}: no such module")
    if in_code:
        m = re.match(r"\s*from ([\w.]+) import (.+)", line)
        if m and m.group(1).split(".")[0] in PACKAGES:
            for name in re.split(r"\s*,\s*", m.group(2).split("#")[0].strip(" ()")):
                why = resolve(f"{m.group(1)}.{name}")
                if why:
                    broken.append(f"{where}: from {m.group(1)} import {name}: {why}")
        return
    for m in BACKTICK.finditer(line):
        span = m.group(1).strip()
        name = re.sub(r"\(.*\)$", "", span)
        if BARE_PY.fullmatch(span):
            if not any(t.endswith("/" + span) or t == span for t in tracked()):
                broken.append(f"{where}: no file named {span}")
        elif IDENTIFIER.fullmatch(name):
            if name not in source_words() and name not in EXTERNAL:
                broken.append(f"{where}: {name} occurs nowhere in the code")
        elif SHORT_DOTTED.fullmatch(name) and not FILE_NAME.search(name):
            first = name.split(".", 1)[0]
            if first in PACKAGES:
                pass  # resolved by import above
            elif first in module_names() or re.fullmatch(r"[A-Z][a-z0-9]+[A-Z]?\w*", first):
                missing = [part for part in name.split(".") if part not in source_words()]
                if missing:
                    broken.append(f"{where}: {name}: {', '.join(missing)} occurs nowhere in the code")
    for m in LINK.finditer(line):
        target = m.group(1).split("#", 1)[0]
        if not target or re.match(r"[a-z]+:", target):
            continue
        linked = ((ROOT / where.split(":", 1)[0]).parent / target).resolve()
        if not linked.exists():
            shown = linked.relative_to(ROOT).as_posix() if linked.is_relative_to(ROOT) else target
            broken.append(f"{where}: no such path {shown}")


def broken_citations() -> list[str]:
    broken: list[str] = []
    for doc in documents():
        rel = doc.relative_to(ROOT).as_posix()
        in_code = False
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            check_line(line, f"{rel}:{number}", broken, in_code)
    return list(dict.fromkeys(broken))  # a link's text and target name the same path


def test_every_cited_path_and_name_exists():
    broken = broken_citations()
    assert not broken, "broken citations in the docs:\n" + "\n".join(broken)


def test_the_check_finds_what_is_missing(tmp_path):
    """The checker itself: each kind of citation is caught when it is wrong, passed when it is right."""
    broken: list[str] = []
    check_line(
        "see `reflex_mlx/quantize.py`, docs/design.md §4, `reflex_mlx.quantize.DEFAULT_RECIPE`,"
        " `bench/speed.py: FLOOR_MS`, `FastReflex`, `DEFAULT_MAX_CYCLES`, `quantize.py`,"
        " `~/.cache/reflex-mlx/x`, `../shared/corpus`, `$OUT/x.json`, `docs/results/verify_*.json`,"
        " [docs/design.md](docs/design.md), `tests/core/test_prompt.py::test_three_prompt_forms`,"
        " `python -m reflex_torch.train`, `spec.HUB_REPO`, `Machine.reset`",
        "README.md:1",
        broken,
        in_code=False,
    )
    assert broken == []
    check_line(
        "`tests/test_prompt.py`, `reflex_mlx.quantize.NO_SUCH`, `convert.nothing_here`, `TorchPredictor`,"
        " `bench/speed.py: NO_SUCH_FLOOR`, `nowhere.py`, [x](missing.md), docs/results/nothing_*.json,"
        " `spec.NO_SUCH_CONSTANT`, `tests/core/test_prompt.py::test_no_such_test`,"
        " `python -m reflex_torch.no_trainer`",
        "README.md:2",
        broken,
        in_code=False,
    )
    assert len(broken) == 11, broken
    code: list[str] = []
    check_line("python -m reflex_mlx.no_such_module", "README.md:3", code, in_code=True)
    check_line("from reflex_core.predict import Predictor, NoSuchThing", "README.md:4", code, in_code=True)
    assert [b.split(":")[1] for b in code] == ["3", "4"], code
