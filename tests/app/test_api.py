"""The Python API on the bundled reflex-tiny: docs/api.md's example as it stands (the MLX
package's `load, run, stream`), streaming, the batched form against single runs, one
exception type for bad input, and imports that leave the frameworks out until a model loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import reflex_mlx
from reflex_app import load, run, run_batch, stream
from reflex_core.errors import ReflexError

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["compute 5 factorial", "add 2 and 3", "say hi"]
FRAMEWORKS = {"mlx", "mlx_lm", "torch", "transformers"}


@pytest.fixture(scope="module")
def tiny():
    return reflex_mlx.load("tiny")


def _docs_example() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_docs_example_runs_as_written_without_torch(fresh_interpreter):
    """The block is run verbatim, where torch cannot be imported: 5! = 120 lands at 0x5000,
    and no module of the torch package loads."""
    code = "import sys; sys.modules['torch'] = None\n" + _docs_example()
    lines, modules = fresh_interpreter(code, timeout=600)
    outcome, cycles, seconds, unit, word = lines[0].split()
    assert outcome == "halted" and 1 <= int(cycles) <= 200 and unit == "s" and int(word) == 120
    assert float(seconds) > 0
    assert lines[1].startswith("4096 {'op': ")  # the first cycle is at 0x1000, decoded
    assert all(line.startswith("{'op': ") for line in lines[4:]) and len(lines) > 5
    assert "mlx.core" in modules and not [m for m in modules if m.startswith("reflex_torch")]


@pytest.mark.parametrize("package", ["reflex_mlx", "reflex_torch"])
def test_importing_a_backend_package_imports_no_framework(fresh_interpreter, package):
    """`import reflex_mlx` and its API are light: the framework waits for a model."""
    _, modules = fresh_interpreter(f"import {package}\nfrom {package} import load, run, stream, run_batch")
    assert not FRAMEWORKS & {m.split(".")[0] for m in modules}


def test_importing_the_model_leaves_the_application_layer_out(fresh_interpreter):
    _, modules = fresh_interpreter(
        "import reflex_mlx, reflex_mlx.model, reflex_mlx.loader, reflex_mlx.backend"
    )
    assert not {m.split(".")[0] for m in modules} & {"reflex_app", "reflex_torch", "click", "rich"}


def test_importing_the_application_layer_imports_no_framework(fresh_interpreter):
    """The API and the command group load; mlx and torch wait for a model to be loaded on them."""
    code = "import reflex_app, reflex_app.cli\nfrom reflex_app import load, run, stream, run_batch"
    _, modules = fresh_interpreter(code)
    assert not (FRAMEWORKS | {"reflex_torch"}) & {m.split(".")[0] for m in modules}


def test_load_stays_the_function_once_the_loader_module_is_imported(tiny):
    """reflex_mlx.load is the API's function after loading a model imported the package's
    loader module (reflex_mlx.loader), as mlx_lm.load is beside mlx_lm.utils."""
    import sys

    from reflex_mlx import load as package_load
    from reflex_mlx.loader import load_model

    assert "reflex_mlx.loader" in sys.modules and callable(load_model)
    assert package_load is reflex_mlx.load and package_load.__module__ == "reflex_mlx"
    assert tiny.device.startswith("mlx") and tiny.source == str(reflex_mlx.BUNDLED_MODEL)


def test_either_backends_bundled_folder_is_the_chosen_backends_own_tiny():
    """locate, behind every load: "tiny" and either package's reflex-tiny folder stand for
    the chosen backend's own bundled model (None), a folder of another name for itself."""
    from reflex_core.runs import locate

    backend, path = locate("tiny", backend="mlx")
    assert backend.name == "mlx" and path is None
    for folder in (reflex_mlx.BUNDLED_MODEL, ROOT / "reflex_torch" / "models" / "reflex-tiny"):
        assert locate(folder, backend="mlx")[1] is None
    assert locate(ROOT / "docs", backend="mlx")[1] == ROOT / "docs"


def test_stream_yields_the_cycles_that_run_returns(tiny):
    cycles = stream(tiny, "add 2 and 3", max_cycles=30)
    seen = []
    while True:
        try:
            seen.append(next(cycles))
        except StopIteration as end:
            streamed = end.value
            break
    result = run(tiny, "add 2 and 3", max_cycles=30)
    assert seen == streamed.cycles == result.cycles and len(seen) >= 1
    assert result.prompt == "add 2 and 3" and result.prompt_tokens > 0 and not result.truncated
    assert result.seconds > 0 and result.summary.startswith(result.outcome)
    assert set(result.memory()) == {"0x5000", "0x5200", "0x6000"}
    assert seen[0].pc == 0x1000 and seen[0].op["op"] and seen[0].asm


def test_run_batch_is_each_prompt_run_alone(tiny):
    batch = run_batch(tiny, PROMPTS, max_cycles=40)
    alone = [run(tiny, prompt, max_cycles=40) for prompt in PROMPTS]
    assert [r.prompt for r in batch] == PROMPTS
    for b, a in zip(batch, alone):
        assert (b.outcome, b.error, b.cycles, b.registers) == (a.outcome, a.error, a.cycles, a.registers)
        assert b.memory_snapshot == a.memory_snapshot and b.prompt_tokens == a.prompt_tokens
    assert {len(r.cycles) for r in batch} != {1}  # the prompts ran programs, not one word


def test_stream_drives_a_given_machine_and_refines_it(tiny):
    """The caller's machine is the one driven (the demo reads it between cycles): reset first,
    or, for a refinement pass, kept: the data a halted run left stay, the code restarts at 0x1000."""
    from reflex_core.loop import drain
    from reflex_core.machine import Machine
    from reflex_core.spec import CODE_START, DATA_ADDR

    task, marker = "add 7 and 8 and store the result", DATA_ADDR + 0x80
    machine = Machine()
    machine.write_word(marker, 1234)  # a word no run of this task writes
    seen = []
    first = drain(stream(tiny, task, machine=machine), lambda c: seen.append(machine.registers()))
    assert first.halted and first.cycles == run(tiny, task).cycles  # reset first: the same run
    assert first.words(marker, 1) == [0] and seen[-1] == first.registers == machine.registers()
    machine.write_word(marker, 1234)
    second = drain(stream(tiny, task, machine=machine, refine=True))
    assert second.cycles[0].pc == CODE_START and second.words(marker, 1) == [1234]
    assert second.words(DATA_ADDR, 1) == first.words(DATA_ADDR, 1) == [15]


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda m: load("no-such-model"), "no model directory at 'no-such-model'"),
        (lambda m: load("tiny", backend="jax"), "unknown backend 'jax'"),
        (lambda m: reflex_mlx.load("no-such-model"), "no model directory at 'no-such-model'"),
        (lambda m: reflex_mlx.load("tiny\nmodel"), "no model directory at 'tiny\\nmodel'"),
        (lambda m: run(m, "   "), "the prompt is empty"),
        (lambda m: run(m, "say hi", max_cycles=0), "max_cycles must be"),
        (lambda m: stream(m, "say hi", max_cycles=-3), "max_cycles must be"),
        (lambda m: run_batch(m, ["say hi", ""]), "the prompt is empty"),
        (lambda m: run_batch(m, []), "at least one prompt"),
        (lambda m: run_batch(m, "say hi"), "a list of prompts"),
        (lambda m: stream(m, "say hi", refine=True), "refine continues a machine"),
        (lambda m: stream(m, "say hi", machine="cpu"), "machine must be a reflex_core.machine.Machine"),
    ],
)
def test_bad_input_is_one_exception_in_one_line(tiny, call, says):
    with pytest.raises(ReflexError) as err:
        call(tiny)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_hub_id_on_the_torch_package_is_one_line():
    """Hub models are converted for MLX: refused before torch or the network is touched."""
    import reflex_torch

    with pytest.raises(ReflexError) as err:
        reflex_torch.load("someone/reflex-model")
    assert str(err.value) == "someone/reflex-model is a hub model converted for MLX: use --backend mlx"
