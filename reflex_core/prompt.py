"""Prompt rendering and tokenization (docs/design.md §4), shared by both backends.

The tokenizer is any Hugging Face tokenizer (mlx-lm wraps the same class), so
this module needs neither mlx nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import CONTEXT_PREFIX, SYSTEM_PROMPT


@dataclass(frozen=True)
class PromptTokens:
    """The token ids a model sees, and whether the prompt had to be cut."""

    ids: list[int]
    original_length: int  # tokens before truncation

    @property
    def truncated(self) -> bool:
        return self.original_length > len(self.ids)


def render_prompt(tokenizer, task: str, config: dict) -> str:
    """The text of the prompt exactly as the released model was trained on it."""
    if config["chat_template"]:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": task},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if config["context_prefix"]:
        return CONTEXT_PREFIX + task
    return task


def encode_prompt(tokenizer, task: str, config: dict) -> PromptTokens:
    """Render and tokenize as plain text, keeping the first max_instr_tokens."""
    text = render_prompt(tokenizer, task, config)
    ids = list(tokenizer.encode(text))
    limit = int(config["max_instr_tokens"])
    return PromptTokens(ids=ids[:limit], original_length=len(ids))


def truncation_notice(tokens: PromptTokens, limit: int) -> str:
    return f"prompt is {tokens.original_length} tokens; only the first {limit} are used (max_instr_tokens)"
