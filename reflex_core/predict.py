"""The one predictor protocol: how the loop, the eval and the CLI drive any backend.

A backend offers a *runner* (`reflex_torch.fast.FastReflex`,
`reflex_mlx.fast.FastReflex`, or either model's plain `Reference`) with
three methods, the same in both:

* `prefix(token_lists)`: the state-independent work for a set of prompts,
  done once, returned as an opaque batch;
* `words(batch, states, indices=None)`: the decoded words (host ints) for the
  states of the prompts at `indices` (all of them when None; a one-prompt
  batch takes any number of states);
* `embed(batch, states)`: the predicted embeddings, as a float32 numpy array.

`Predictor` and `BatchPredictor` adapt a runner to `reflex_core.loop` (one
prompt) and to lockstep runs of many prompts (`run_many`, the eval).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .loop import RunResult, run_many
from .prompt import PromptTokens, encode_prompt
from .spec import DEFAULT_MAX_CYCLES


class Runner(Protocol):
    def prefix(self, token_lists: Sequence[Sequence[int]]) -> Any: ...

    def words(
        self, batch: Any, states: Sequence[Sequence[int]], indices: Sequence[int] | None = None
    ) -> list[int]: ...

    def embed(self, batch: Any, states: Sequence[Sequence[int]]) -> np.ndarray: ...


class Predictor:
    """State -> word for one task; the prompt's prefix is computed once, here."""

    def __init__(self, runner: Runner, tokenizer, task: str, config: dict):
        self.runner = runner
        self.tokens: PromptTokens = encode_prompt(tokenizer, task, config)
        self.batch = runner.prefix([self.tokens.ids])

    def embed(self, states: Sequence[Sequence[int]]) -> np.ndarray:
        return self.runner.embed(self.batch, states)

    def predict_many(self, states: Sequence[Sequence[int]]) -> list[int]:
        return self.runner.words(self.batch, states)

    def __call__(self, state: Sequence[int]) -> int:
        return self.predict_many([state])[0]


class BatchPredictor:
    """Many prompts in lockstep: `predict(indices, states)` for `run_many(with_indices=True)`."""

    def __init__(self, runner: Runner, tokenizer, prompts: Sequence[str], config: dict):
        self.runner = runner
        self.tokens = [encode_prompt(tokenizer, p, config) for p in prompts]
        self.batch = runner.prefix([t.ids for t in self.tokens])

    def __call__(self, indices: Sequence[int], states: Sequence[Sequence[int]]) -> list[int]:
        return self.runner.words(self.batch, states, indices)


def run_batch(
    runner: Runner, tokenizer, prompts: Sequence[str], config: dict, max_cycles: int = DEFAULT_MAX_CYCLES
) -> list[RunResult]:
    """Run every prompt's program in lockstep; each stops on its own outcome."""
    predict = BatchPredictor(runner, tokenizer, prompts, config)
    return run_many(predict, len(prompts), max_cycles=max_cycles, with_indices=True)
