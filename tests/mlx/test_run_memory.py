"""`reflex-mlx run` holds what Reflex reads: after a load and a run, an untied text
head (lm_head) is still on disk; the demo's text side reads it when it writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import mlx.core as mx
from reflex_core.loop import run
from reflex_core.predict import Predictor
from reflex_core.textmode import text_messages
from reflex_mlx.backend import MLXBackend
from reflex_mlx.quantize import nbytes

before = mx.get_active_memory()
loaded = MLXBackend().load(sys.argv[1])
model = loaded.runner.model
run(Predictor(loaded.runner, loaded.tokenizer, "compute 5 factorial", loaded.config), max_cycles=4)
after_run = mx.get_active_memory() - before
loaded.text_writer.max_tokens = 2
text = "".join(loaded.text_writer(text_messages("say hi")))
print(json.dumps({
    "decoder_and_reflex": nbytes(model.backbone) + nbytes(model.reflex),
    "head": nbytes(loaded.text_writer.language_model.lm_head),
    "after_run": after_run,
    "after_text": mx.get_active_memory() - before,
}))
"""


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory):
    """The test fixture with an untied lm_head (as the released 7B has), converted in float32."""
    from convert.convert import convert_checkpoint
    from reflex_core.shapes import FIXTURE
    from reflex_mlx.quantize import Recipe
    from reflex_torch.random import build_fixture

    source = build_fixture(tmp_path_factory.mktemp("untied"), shape=FIXTURE.with_(tie_embeddings=False))
    out = tmp_path_factory.mktemp("mlx") / "untied"
    recipe = Recipe(backbone_dtype="float32", adapter_dtype="float32")
    return convert_checkpoint(
        str(source / "reflex.pt"), str(source / "backbone"), out, recipe=recipe, verify=False, quiet=True
    )


def test_a_run_holds_the_decoder_and_reflex_but_not_the_text_head(untied_dir):
    config = json.loads((untied_dir / "config.json").read_text())
    assert config["text_head"] is True
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(untied_dir)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    held, head = got["decoder_and_reflex"], got["head"]
    assert head > 50_000  # 400 x 64 float32: large enough to be seen
    # Arrays alive after loading and running: the decoder and the Reflex modules, not the head.
    assert held <= got["after_run"] < held + head // 2, got
    # Writing text reads the head in.
    assert got["after_text"] >= held + head, got
