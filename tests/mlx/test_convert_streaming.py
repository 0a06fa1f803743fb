"""The converter streams: the backbone a tensor at a time and a shard at a time,
the adapter side a part at a time, so its peak memory follows the largest tensor
and the shard size, not the model's size; and a many-shard output is mlx-lm's
layout, the same model as a one-shard one."""

from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from convert.convert import convert_checkpoint
from reflex_core.shapes import TINY_TEST

# A random model of ~260 MB of bf16 backbone (16 layers of 4096-wide MLPs, a
# 16000-row vocabulary): large beside one tensor (16 MB) and one shard (8 MB).
SHAPE = TINY_TEST.with_(hidden=512, layers=16, heads=8, kv_heads=2, intermediate=4096, vocab=16000)
SHARD = 8 << 20
MARGIN = 16 << 20

CHILD = """
import json, resource, sys
import mlx.core as mx
import reflex_mlx.backbone
from convert.convert import convert_checkpoint
reflex_mlx.backbone.SHARD_BYTES = int(sys.argv[3])
convert_checkpoint(sys.argv[1] + "/reflex.pt", sys.argv[1] + "/causal", sys.argv[2], verify=False, quiet=True)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mlx_peak": mx.get_peak_memory(), "maxrss": rss}))
"""


@pytest.fixture(scope="module")
def large_dir(tmp_path_factory):
    from bench.release_conversion import build_streamed

    work = tmp_path_factory.mktemp("streamed")
    build_streamed(work, SHAPE, seed=0)
    return work


def _tensor_bytes(folder) -> list[int]:
    """Every tensor's stored bytes, from the safetensors headers."""
    sizes = []
    for file in sorted(folder.glob("*.safetensors")):
        sizes += [v.nbytes for v in mx.load(str(file)).values()]  # lazy: headers only
    return sizes


def test_peak_memory_follows_the_largest_tensor_not_the_model(large_dir, tmp_path):
    out = tmp_path / "converted"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(large_dir), str(out), str(SHARD)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["mlx_peak"]
    sizes = _tensor_bytes(large_dir / "causal")
    whole = sum(sizes)
    # one shard of outputs, and one tensor's source, its float16 cast and its output
    bound = SHARD + 3 * max(sizes) + MARGIN
    assert bound < whole / 2, "the fixture must be large beside the bound"
    assert peak < bound, (
        f"peak {peak / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB, model {whole / 2**20:.0f} MiB"
    )
    shards = sorted((out / "backbone").glob("model-*.safetensors"))
    assert len(shards) > 10
    index = json.loads((out / "backbone" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in shards}


def test_many_shards_are_the_same_model_as_one(fixture_dir, tmp_path, monkeypatch):
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model as mlx_lm_load

    import reflex_mlx.backbone
    from reflex_mlx.loader import load_model

    one = convert_checkpoint(
        str(fixture_dir / "reflex.pt"),
        str(fixture_dir / "backbone"),
        tmp_path / "one",
        verify=False,
        quiet=True,
    )
    monkeypatch.setattr(reflex_mlx.backbone, "SHARD_BYTES", 64 << 10)
    many = convert_checkpoint(
        str(fixture_dir / "reflex.pt"),
        str(fixture_dir / "backbone"),
        tmp_path / "many",
        verify=False,
        quiet=True,
    )
    assert [f.name for f in (one / "backbone").glob("model*.safetensors")] == ["model.safetensors"]
    assert len(list((many / "backbone").glob("model-*.safetensors"))) > 3
    weights = [dict(mx.load(str(f))) for f in (one / "backbone").glob("model*.safetensors")][0]
    loaded, _ = mlx_lm_load(many / "backbone", lazy=True)  # mlx-lm reads the sharded layout itself
    got = dict(tree_flatten(loaded.parameters()))
    assert got.keys() == weights.keys()
    for name, value in weights.items():
        assert np.array_equal(np.array(got[name]), np.array(value)), name
    load_model(many)  # the folder's validator and manifest accept it
