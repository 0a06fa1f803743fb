"""Prompt rendering, truncation, and padding invariance of the reference (DESIGN.md §4)."""

from __future__ import annotations

import numpy as np

from reflex_core.prompt import encode_prompt, render_prompt
from reflex_core.spec import CONTEXT_PREFIX, SYSTEM_PROMPT


def _random_states(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, size=(n, 65), dtype=np.uint64).tolist()


def test_three_prompt_forms(torch_fixture):
    _, tokenizer, config = torch_fixture
    chat = render_prompt(tokenizer, "add 7 and 8", config)
    assert chat.startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>")
    assert chat.endswith("<|im_start|>user\nadd 7 and 8<|im_end|>\n<|im_start|>assistant\n")
    legacy = dict(config, chat_template=False, context_prefix=True)
    assert render_prompt(tokenizer, "add 7 and 8", legacy) == CONTEXT_PREFIX + "add 7 and 8"
    raw = dict(config, chat_template=False, context_prefix=False)
    assert render_prompt(tokenizer, "add 7 and 8", raw) == "add 7 and 8"


def test_padding_to_96_does_not_change_the_embedding(torch_fixture):
    from reflex_torch.load import TorchPredictor

    model, tokenizer, config = torch_fixture
    task = "compute 5 factorial and store it"
    padded = TorchPredictor(model, tokenizer, task, config, pad=True)
    unpadded = TorchPredictor(model, tokenizer, task, config, pad=False)
    assert padded.input_ids.shape[1] == config["max_instr_tokens"] == 96
    assert unpadded.input_ids.shape[1] == len(unpadded.tokens.ids) < 96
    states = _random_states(64)
    a = padded.embed(states).numpy()
    b = unpadded.embed(states).numpy()
    assert a.dtype == np.float32
    rel = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a, axis=-1)  # per state
    print(f"padded vs unpadded relative error: max {rel.max():.2e} over {len(rel)} states")
    assert rel.max() < 1e-6


def test_long_prompt_is_truncated_and_reported(torch_fixture):
    _, tokenizer, config = torch_fixture
    task = "add 7 and 8 and store the result " * 20
    tokens = encode_prompt(tokenizer, task, config)
    full = tokenizer.encode(render_prompt(tokenizer, task, config))
    assert len(full) > 96
    assert tokens.ids == full[:96]
    assert tokens.truncated and tokens.original_length == len(full)
    short = encode_prompt(tokenizer, "say hi", config)
    assert not short.truncated and short.original_length == len(short.ids)
