"""The demo's text side on MLX: the backbone already in memory writes an answer with
mlx-lm's streaming generation, greedy. No second copy of the weights: the mlx-lm
model is the one `reflex_mlx.loader` built, whose decoder the Reflex model also runs;
an untied text head is read from disk the first time text is written."""

from __future__ import annotations

from collections.abc import Iterator

from reflex_core.textmode import MAX_NEW_TOKENS


class TextWriter:
    """messages -> text chunks, as reflex_core.textmode's `Stream`."""

    def __init__(self, language_model, tokenizer, max_tokens: int = MAX_NEW_TOKENS):
        self.language_model, self.tokenizer, self.max_tokens = language_model, tokenizer, max_tokens

    def load(self) -> None:
        """Read what only text needs, an untied text head, into memory (reflex_mlx.loader
        leaves it on disk until now)."""
        import mlx.core as mx

        mx.eval(self.language_model.parameters())

    def __call__(self, messages: list[dict]) -> Iterator[str]:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        self.load()
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        greedy = make_sampler(temp=0.0)
        for response in stream_generate(
            self.language_model, self.tokenizer, prompt, max_tokens=self.max_tokens, sampler=greedy
        ):
            yield response.text
