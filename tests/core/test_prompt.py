"""Prompt rendering and truncation (docs/design.md §4), with the bundled tokenizer, no torch."""

from __future__ import annotations

from reflex_core.prompt import encode_prompt, render_prompt
from reflex_core.spec import CONTEXT_PREFIX, SYSTEM_PROMPT


def test_three_prompt_forms(tiny_tokenizer):
    tokenizer, config = tiny_tokenizer
    chat = render_prompt(tokenizer, "add 7 and 8", config)
    assert chat.startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>")
    assert chat.endswith("<|im_start|>user\nadd 7 and 8<|im_end|>\n<|im_start|>assistant\n")
    legacy = dict(config, chat_template=False, context_prefix=True)
    assert render_prompt(tokenizer, "add 7 and 8", legacy) == CONTEXT_PREFIX + "add 7 and 8"
    raw = dict(config, chat_template=False, context_prefix=False)
    assert render_prompt(tokenizer, "add 7 and 8", raw) == "add 7 and 8"


def test_long_prompt_is_truncated_and_reported(tiny_tokenizer):
    tokenizer, config = tiny_tokenizer
    task = "add 7 and 8 and store the result " * 20
    tokens = encode_prompt(tokenizer, task, config)
    full = tokenizer.encode(render_prompt(tokenizer, task, config))
    assert len(full) > 96
    assert tokens.ids == full[:96]
    assert tokens.truncated and tokens.original_length == len(full)
    short = encode_prompt(tokenizer, "say hi", config)
    assert not short.truncated and short.original_length == len(short.ids)
