"""Load a converted model directory and predict words with it."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from reflex_core.errors import first_line
from reflex_core.prompt import PromptTokens, encode_prompt, pad_batch
from reflex_core.spec import ADAPTERS_FILE, BACKBONE_DIR, MODEL_CONFIG_FILE, MODEL_FORMAT, reflex_config

from .model import Reflex, ReflexArgs, ReflexModel


class ModelError(Exception):
    """A one-line reason a model directory cannot be used."""


def load_model(model_dir: str | Path) -> tuple[ReflexModel, object, dict]:
    """(model, tokenizer, config) from a directory written by `python -m convert`."""
    from mlx_lm.utils import load as load_backbone

    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise ModelError(f"no model directory at {model_dir}")
    config_path = model_dir / MODEL_CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{model_dir} is not a converted Reflex model (no {MODEL_CONFIG_FILE})") from None
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read {config_path}: {first_line(err)}") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise ModelError(f"{config_path} is not a {MODEL_FORMAT} model config")
    try:
        config = reflex_config(config)
    except ValueError as err:
        raise ModelError(f"{config_path}: {err}") from None

    try:
        backbone, tokenizer = load_backbone(str(model_dir / config.get("backbone", BACKBONE_DIR)))
    except Exception as err:  # mlx-lm raises many kinds; the user needs one line
        raise ModelError(f"cannot load the backbone in {model_dir}: {first_line(err)}") from None
    try:
        reflex = Reflex(ReflexArgs.from_config(config))
        weights = mx.load(str(model_dir / ADAPTERS_FILE))
        reflex.load_weights(list(weights.items()), strict=True)
        model = ReflexModel(backbone, reflex)
    except Exception as err:
        raise ModelError(f"cannot load the adapters in {model_dir}: {first_line(err)}") from None
    model.eval()
    mx.eval(model.parameters())
    return model, tokenizer, config


def states_array(states: list[list[int]]) -> mx.array:
    return mx.array(np.asarray(states, dtype=np.uint32))


class MLXPredictor:
    """State -> word for one task. The prompt's prefix is computed once, here;
    the per-cycle step runs through mx.compile unless compiled=False."""

    def __init__(self, model: ReflexModel, tokenizer, task: str, config: dict,
                 compiled: bool = True):
        self.model = model
        self.step = model.compiled_step if compiled else model.step
        self.words = model.compiled_words if compiled else model.words
        self.tokens: PromptTokens = encode_prompt(tokenizer, task, config)
        self.prefix = model.prefix(mx.array([self.tokens.ids]))
        mx.eval(self.prefix)

    def embed(self, states: list[list[int]]) -> mx.array:
        return self.step(self.prefix, states_array(states))

    def predict_many(self, states: list[list[int]]) -> list[int]:
        return [int(w) for w in np.array(self.words(self.prefix, states_array(states)))]

    def __call__(self, state: list[int]) -> int:
        return self.predict_many([state])[0]


class MLXBatchPredictor:
    """Many prompts in lockstep: one model call per cycle for every unfinished program.

    The prompts are right-padded into one prefix batch, computed once; each
    call gathers the rows of the programs still running.
    """

    def __init__(self, model: ReflexModel, tokenizer, prompts: list[str], config: dict,
                 compiled: bool = True):
        self.model = model
        self.words = model.compiled_words if compiled else model.words
        self.tokens = [encode_prompt(tokenizer, p, config) for p in prompts]
        ids, lengths = pad_batch(self.tokens, tokenizer.pad_token_id or 0)
        self.prefix = model.prefix(mx.array(ids))
        self.last = np.array(lengths) - 1
        mx.eval(self.prefix)

    def __call__(self, indices: list[int], states: list[list[int]]) -> list[int]:
        rows = np.asarray(indices)
        width = int(self.last[rows].max()) + 1  # drop columns that are padding for all rows
        prefix = self.prefix[mx.array(rows), :width]
        words = self.words(prefix, states_array(states), mx.array(self.last[rows]))
        return [int(w) for w in np.array(words)]
