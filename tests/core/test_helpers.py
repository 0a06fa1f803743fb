"""The one-definition helpers of reflex_core: atomic writes, timing, shapes, configs, backends."""

from __future__ import annotations

import os

import pytest

from reflex_core import backends
from reflex_core.files import write_atomically
from reflex_core.shapes import FIXTURE, RELEASE, checkpoint_config, decoder_config, shape_of_decoder
from reflex_core.spec import MASK32, ReflexArgs, adapter_layers
from reflex_core.timing import median_ms


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.json"
    write_atomically(target, "old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(target, fail)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]  # no temporary file left
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"


def test_median_ms_times_each_input():
    calls = []
    ms = median_ms(lambda x: calls.append(x), [1, 2, 3], warmup=2)
    assert calls == [1, 2, 1, 2, 3] and ms >= 0


def test_release_shape_and_configs():
    config = checkpoint_config(RELEASE)
    args = ReflexArgs.from_config(config, RELEASE.layers)
    assert args.adapter_layers == (3, 7, 11, 15, 19, 23, 27) and args.num_adapters == 7
    assert (args.hidden, args.embed_dim, args.num_instrs) == (3584, 256, 691)
    qwen = decoder_config(RELEASE)
    assert qwen["num_key_value_heads"] == 4 and qwen["intermediate_size"] == 18944
    assert shape_of_decoder(qwen, embed_dim=256, num_instrs=691) == RELEASE
    assert adapter_layers(FIXTURE.layers, FIXTURE.inject_every) == [3, 7]
    assert MASK32 == 2**32 - 1


def test_backend_choice_says_why():
    name, why = backends.choose()
    assert name in backends.registered() and why
    with pytest.raises(backends.BackendError, match="no backend 'jax'"):
        backends.get("jax")
