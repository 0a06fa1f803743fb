"""The torch trainer under torchrun (issue 15): two CPU processes over gloo train
exactly what one process trains at the same global batch.

Why: data parallelism must not change what is learned, only how fast: every
rank draws the same global batch and trains on its own shard, DDP averages the
gradients, and the logged loss is the global batch's. The GPU numbers (NCCL,
two H200s) come from bench/ddp_scaling.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from reflex_core.corpus import find_corpus  # noqa: E402
from reflex_core.training import SampleTable  # noqa: E402

if find_corpus() is None:
    pytest.skip("training corpus absent (../shared/corpus or $REFLEX_CORPUS)", allow_module_level=True)

SMALL = "--max-programs 40 --hidden 64 --layers 2 --inject-every 2 --heads 4 --kv-heads 2 "
SMALL += "--intermediate 128 --vocab 400 "
SMALL += "--embed-dim 32 --steps 5 --batch 16 --warmup 2 --log-every 1 --eval-every 100 --eval-samples 32 "
SMALL += "--save-every 100 --device cpu --threads 1 --seed 5"


def losses(out) -> list[float]:
    return [
        json.loads(line)["loss"] for line in (out / "curve.jsonl").read_text().splitlines() if "loss" in line
    ]


@pytest.mark.slow
def test_two_ranks_train_what_one_trains(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "reflex_torch.train", "--out", str(tmp_path / "one"), *SMALL.split()],
        capture_output=True,
        text=True,
        env=env,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    ddp = subprocess.run(
        [*launcher, "-m", "reflex_torch.train", "--out", str(tmp_path / "two"), *SMALL.split()],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "data parallel: 2 ranks, each trains on its 8 rows of every global batch" in ddp.stdout
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 5
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-4 * abs(a), (one, two)
    a = torch.load(tmp_path / "one" / "reflex.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "two" / "reflex.pt", weights_only=True)["state"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-5), key


def test_a_global_batch_that_does_not_split_over_the_ranks_is_one_line(tmp_path, monkeypatch, capsys):
    """Said by each rank before it joins the group (so no rank waits for the others)."""
    from reflex_torch import train

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # a rank other than 0 does not hold OUT
    with pytest.raises(SystemExit) as exit_:
        train.main(["--out", str(tmp_path / "odd"), *SMALL.split(), "--batch", "15"])
    assert exit_.value.code == "error: --batch 15 (the global batch) does not split over 2 ranks"
    assert not (tmp_path / "odd").exists()


def test_each_rank_trains_on_its_own_shard_of_the_global_batch():
    class Tokenizer:
        pad_token_id = 0

        def encode(self, text):
            return [1 + (ord(c) % 50) for c in text]

    groups = [{"prompts": [f"p{i}", f"prompt {i} longer"]} for i in range(6)]
    cycles = [[([i] * 65, i)] * (i + 1) for i in range(6)]
    config = {"chat_template": False, "context_prefix": False, "max_instr_tokens": 96}
    table = SampleTable(groups, cycles, list(range(6)), Tokenizer(), config)
    import numpy as np

    batch = table.draw(12, np.random.default_rng(0))
    shards = [batch.shard(rank, 3) for rank in range(3)]
    assert np.array_equal(np.concatenate([s.targets for s in shards]), batch.targets)
    assert np.array_equal(np.concatenate([s.states for s in shards]), batch.states)
    for rank, shard in enumerate(shards):
        rows = batch.input_ids[rank * 4 : (rank + 1) * 4]
        assert np.array_equal(shard.input_ids, rows[:, : shard.input_ids.shape[1]])
        assert shard.attention_mask.sum(axis=1).max() == shard.input_ids.shape[1]  # no column of pads only
    with pytest.raises(ValueError, match="does not split"):
        batch.shard(0, 5)
