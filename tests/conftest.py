"""Shared fixtures: one small random Reflex checkpoint, converted both ways, and helpers.

Built by the project itself (reflex_torch.random + convert), so the tests run
offline with real transformers, mlx-lm and safetensors files. Nothing here
imports torch at collection: the tests of reflex_core run without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_TORCH = ROOT / "reflex_torch" / "models" / "reflex-tiny"
TINY_MLX = ROOT / "reflex_mlx" / "models" / "reflex-tiny"


def pytest_configure(config):
    # Under pytest-xdist each worker is one of `make test`'s processes on a core of its
    # own: a torch or BLAS pool of one thread per worker (inherited by the subprocesses
    # the tests start). Two threads each spin against the other worker's and were
    # measured 3.4x slower on the 2-core machine. Set before any test imports torch.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    # The files holding slow tests go first, the heaviest (`slow(minutes=N)`, a rough
    # estimate for scheduling only) before the rest: with `make test`'s two workers (one
    # file each at a time, in this order: --no-loadscope-reorder), the longest files start
    # at once instead of running alone at the end.
    weight: dict = {}
    for item in items:
        for mark in item.iter_markers("slow"):
            weight[item.path] = max(weight.get(item.path, 0), mark.kwargs.get("minutes", 1))
    items.sort(key=lambda item: -weight.get(item.path, 0))
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        skip = pytest.mark.skip(reason="needs CUDA (no GPU here)")
        for item in gpu:
            item.add_marker(skip)


def random_state_list(n: int, seed: int) -> list[list[int]]:
    """n machine states of uniformly random 32-bit words."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, size=(n, 65), dtype=np.uint64).tolist()


def _invoke(command, *args, input: str | None = None) -> subprocess.CompletedProcess:
    from click.testing import CliRunner

    result = CliRunner().invoke(command, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def invoke():
    """invoke(command, *args, input=None): a click command (`reflex_app.cli.main`, `convert.convert.main`)
    run in this process through click's runner, as a CompletedProcess (returncode, stdout,
    stderr); an exception that escaped the command fails the test. A process costs seconds
    of imports: the tests about processes themselves (signals, kills, what a fresh
    interpreter imports, the console script) start real ones."""
    return _invoke


@pytest.fixture(scope="session")
def random_states():
    """random_states(n, seed) -> n states of random words (list of 65-word lists)."""
    return random_state_list


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory):
    from reflex_torch.random import build_fixture

    return build_fixture(tmp_path_factory.mktemp("fixture"))


@pytest.fixture(scope="session")
def llama_fixture_dir(tmp_path_factory):
    """The same kind of random checkpoint over a Llama backbone (shapes.FIXTURE_LLAMA)."""
    from reflex_core.shapes import FIXTURE_LLAMA
    from reflex_torch.random import build_fixture

    return build_fixture(tmp_path_factory.mktemp("fixture-llama"), shape=FIXTURE_LLAMA)


def _convert(fixture_dir, out, **kw):
    from convert.convert import convert_checkpoint

    kw.setdefault("verify", False)
    return convert_checkpoint(
        str(fixture_dir / "reflex.pt"), str(fixture_dir / "backbone"), out, quiet=True, **kw
    )


def _recipe(**kw):
    from reflex_mlx.quantize import Recipe

    return Recipe(**kw)


def _float32(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlx") / "f32"
    return _convert(fixture_dir, out, recipe=_recipe(backbone_dtype="float32", adapter_dtype="float32"))


def _torch(fixture_dir):
    from reflex_torch.loader import load_model

    return load_model(fixture_dir / "reflex.pt", backbone=str(fixture_dir / "backbone"), device="cpu")


def _mlx(model_dir):
    from reflex_mlx.loader import load_model

    return load_model(model_dir)


@pytest.fixture(scope="session")
def mlx_float32_dir(fixture_dir, tmp_path_factory):
    """The fixture converted with an unquantized float32 backbone and float32 adapters."""
    return _float32(fixture_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_mlx_float32_dir(tmp_path_factory):
    """reflex-tiny converted with a float32 backbone: the subject of the whole-eval parity
    tests. MLX's CPU backend multiplies float16 slowly and without BLAS; the shipped float16
    conversion is checked on a sample of the same cycles (tests/parity/test_tiny.py)."""
    return _float32(TINY_TORCH, tmp_path_factory)


@pytest.fixture(scope="session")
def mlx_4bit_dir(fixture_dir, tmp_path_factory):
    """The fixture converted as shipped for the release: 4-bit backbone, group size 64."""
    return _convert(
        fixture_dir, tmp_path_factory.mktemp("mlx") / "q4", recipe=_recipe(bits=4, backbone_dtype=None)
    )


@pytest.fixture(scope="session")
def torch_fixture(fixture_dir):
    return _torch(fixture_dir)


@pytest.fixture(scope="session")
def mlx_float32(mlx_float32_dir):
    return _mlx(mlx_float32_dir)


@pytest.fixture(scope="session")
def llama_mlx_float32_dir(llama_fixture_dir, tmp_path_factory):
    return _float32(llama_fixture_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def llama_mlx_4bit_dir(llama_fixture_dir, tmp_path_factory):
    return _convert(
        llama_fixture_dir,
        tmp_path_factory.mktemp("mlx") / "q4-llama",
        recipe=_recipe(bits=4, backbone_dtype=None),
    )


@pytest.fixture(scope="session")
def llama_torch_fixture(llama_fixture_dir):
    return _torch(llama_fixture_dir)


@pytest.fixture(scope="session")
def llama_mlx_float32(llama_mlx_float32_dir):
    return _mlx(llama_mlx_float32_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """(tokenizer, config) of the bundled reflex-tiny, read without torch."""
    import json

    from transformers import AutoTokenizer

    from reflex_core.spec import reflex_config

    config = reflex_config(json.loads((TINY_MLX / "config.json").read_text()))
    return AutoTokenizer.from_pretrained(TINY_MLX / "backbone"), config


@pytest.fixture(scope="session")
def tiny_reference_eval(tmp_path_factory):
    """(report, recording) of the 41-task eval run by the torch reference on the bundled
    reflex-tiny (float32, hooks, padded to 96; bench.agreement.recorded_eval).

    Computed once per `pytest` run and shared by the xdist workers through a file in
    their common temporary folder, under a lock: the MLX sides of tests/parity that
    compare against it run on both workers at once.
    """
    from filelock import FileLock

    from bench.agreement import Recording

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    saved = root / "tiny_reference_eval.json"
    with FileLock(str(saved) + ".lock"):
        if not saved.is_file():
            report, recording = _tiny_reference_eval()
            payload = {"report": report, "prompts": recording.prompts, "calls": recording.calls}
            tmp = saved.with_suffix(".tmp")
            tmp.write_text(json.dumps(payload))
            tmp.replace(saved)
        payload = json.loads(saved.read_text())
    calls = [(list(i), [list(s) for s in states], list(w)) for i, states, w in payload["calls"]]
    return payload["report"], Recording(prompts=payload["prompts"], calls=calls)


def _tiny_reference_eval():
    import torch

    from bench.agreement import batched, recorded_eval
    from reflex_torch.loader import load_model
    from reflex_torch.model import Reference

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_torch_thread
    try:
        model, tokenizer, config = load_model(TINY_TORCH / "reflex.pt", device="cpu")
        reference = Reference(model, tokenizer.pad_token_id, config["max_instr_tokens"])
        return recorded_eval(batched(reference, tokenizer, config))
    finally:
        torch.set_num_threads(threads)


HANG_S = 300.0  # far beyond any call these tests make, on a machine 4x slower than idle


def call_or_fail_if_hung(fn, *args, seconds: float = HANG_S, **kwargs):
    """fn(*args, **kwargs) in a daemon thread: its value, or its exception raised here;
    a call still running after `seconds` fails the test as hung (a blocking open of a
    FIFO never returns: this turns that into a failure rather than a stuck run)."""
    import threading

    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as err:  # re-raised in the test's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} was still running after {seconds:.0f} s: it hung")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture(scope="session")
def no_hang():
    """no_hang(fn, *args, **kwargs): fn's result; fails the test if fn blocks (see
    call_or_fail_if_hung). Asserts no duration: speed belongs in the benches."""
    return call_or_fail_if_hung


def run_fresh(code: str, timeout: float = HANG_S) -> tuple[list[str], set[str]]:
    """Run `code` in a fresh interpreter (this one, this environment): (the lines it printed,
    the dotted names of every module imported by its end). A non-zero exit fails the test."""
    import sys

    marker = "MODULES-IMPORTED:"
    probe = f"{code}\nimport sys as _sys\nprint({marker!r}, ' '.join(sorted(_sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"the fresh interpreter exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    *lines, last = proc.stdout.splitlines()
    assert last.startswith(marker), proc.stdout[-2000:]
    return lines, set(last[len(marker) :].split())


@pytest.fixture(scope="session")
def fresh_interpreter():
    """fresh_interpreter(code) -> (lines printed, modules imported): what code imports when it
    runs alone (run_fresh), for the checks that a layer loads no framework before a model."""
    return run_fresh


@pytest.fixture(scope="module")
def one_torch_thread():
    """On a small shared CPU two torch threads spin against each other (20x slower here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def populate_hub_cache(cache: Path, repo: str, folder: Path) -> Path:
    """Lay `folder` out in huggingface_hub's cache as repo's main revision (what a
    download leaves there), so that HF_HUB_OFFLINE=1 loads it as a user's machine would."""
    import shutil

    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)
    return root / "snapshots" / commit


@pytest.fixture
def hub_cache(tmp_path):
    """(cache folder, populate(repo, folder)): a huggingface_hub cache to fill."""
    cache = tmp_path / "hub-cache"
    return cache, lambda repo, folder: populate_hub_cache(cache, repo, folder)
