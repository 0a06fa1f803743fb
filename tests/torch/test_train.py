"""Tests for the training code (reflex_torch.train) and the held-out evaluation.

Why: a model this project trains must load through the same path as the
released one (`load_model`) and predict exactly what training measured; its
held-out programs must really be unseen; no evaluation prompt may leak into
training; and a run stopped by the time limit must resume where it left off.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from reflex_core.corpus import find_corpus  # noqa: E402
from reflex_core.prompt import encode_prompt  # noqa: E402

if find_corpus() is None:
    pytest.skip("training corpus absent (../shared/corpus or $REFLEX_CORPUS)", allow_module_level=True)

from reflex_torch import heldout as heldout_mod  # noqa: E402
from reflex_torch import train  # noqa: E402
from reflex_torch.loader import load_model  # noqa: E402

TINY = [
    "--max-programs",
    "60",
    "--hidden",
    "64",
    "--layers",
    "4",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--intermediate",
    "128",
    "--vocab",
    "512",
    "--embed-dim",
    "32",
    "--steps",
    "30",
    "--batch",
    "16",
    "--warmup",
    "5",
    "--log-every",
    "1",
    "--eval-every",
    "15",
    "--eval-samples",
    "64",
    "--save-every",
    "10",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--seed",
    "3",
]
RELEASED_KEYS = {
    "backbone_id",
    "hidden",
    "inject_every",
    "adapter_mlp_ratio",
    "max_instr_tokens",
    "embed_dim",
    "num_instrs",
    "chat_template",
    "context_prefix",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("run")
    try:
        result = train.main(["--out", str(out), *TINY])
    finally:
        torch.set_num_threads(threads)
    return out, result


def curve(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]


def test_writes_released_format(trained):
    out, result = trained
    for name in (
        "reflex.pt",
        "heldout.json",
        "curve.jsonl",
        "train_state.pt",
        "backbone/config.json",
        "backbone/model.safetensors",
        "backbone/tokenizer.json",
    ):
        assert (out / name).is_file(), name
    saved = torch.load(out / "reflex.pt", map_location="cpu", weights_only=True)
    assert set(saved["config"]) == RELEASED_KEYS
    assert saved["config"]["backbone_id"] == "backbone"
    assert saved["config"]["num_instrs"] == saved["state"]["instr_words"].shape[0]
    for key, value in saved["state"].items():
        assert value.dtype == (torch.int64 if key == "instr_words" else torch.float32), key
    assert result["step"] == 30


def test_loss_falls(trained):
    out, _ = trained
    losses = [r["loss"] for r in curve(out) if "loss" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert any("heldout_top1" in r for r in curve(out))


def test_loaded_model_predicts_as_in_training(trained):
    """load_model (the inference path) gives the training model's predictions."""
    out, result = trained
    model, tokenizer, config = load_model(out / "reflex.pt", device="cpu", backbone_dtype=torch.float32)
    pairs = result["eval_pairs"]
    for prompt in {p.prompt for p in pairs}:  # the same token ids as in training
        assert tokenizer.encode(prompt) == result["tokenizer"].encode(prompt)
        assert encode_prompt(tokenizer, prompt, config) == encode_prompt(result["tokenizer"], prompt, config)
    batch = pairs[:32]
    ids = torch.tensor([encode_prompt(tokenizer, batch[0].prompt, config).ids] * len(batch))
    states = torch.tensor([p.state for p in batch])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids, mask, states), result["model"](ids, mask, states), rtol=0, atol=0
        )
    loaded = heldout_mod.predict(model, tokenizer, config, pairs)
    assert loaded == heldout_mod.predict(result["model"], result["tokenizer"], config, pairs)
    correct, _ = heldout_mod.top1(model, tokenizer, config, pairs)
    assert correct / len(pairs) == curve(out)[-1]["heldout_top1"]
    # and the held-out CLI rebuilds the same pairs from heldout.json alone
    entries = heldout_mod.read_heldout(out)
    rebuilt = heldout_mod.make_pairs(
        entries, heldout_mod.heldout_cycles(entries), all_prompts=True, max_samples=64
    )
    assert rebuilt == pairs
    assert 0.0 <= heldout_mod.main([str(out), "--max-samples", "50"]) <= 1.0


def test_heldout_programs_are_not_trained_on(trained):
    out, _ = trained
    split = train.split_programs(train.parse_args(["--out", str(out), *TINY]))
    held = {tuple(e["words"]) for e in heldout_mod.read_heldout(out)}
    trained_words = {tuple(f"{w:08x}" for w in g["program"].words) for g in split.train}
    assert held and trained_words and not held & trained_words
    assert len(held) == 3  # 5% of 60


def test_full_split_leaks_no_eval_prompt():
    """The trainer's split of the whole corpus (its programs' replay, which does not
    change which prompts go where, is tests/core/test_machine.py's)."""
    from reflex_core import training
    from reflex_core.evaluation import bare, eval_prompts, near_copy_tags

    programs = training.parse_data(find_corpus()).programs
    args = train.parse_args(["--out", "unused"])
    split_by = lambda eval_filter: training.split_programs(
        programs, heldout_fraction=args.heldout_fraction, seed=args.seed, eval_filter=eval_filter
    )
    split = split_by(args.eval_filter)
    forbidden = eval_prompts(bare)  # the default filter: punctuation ignored too
    trained_prompts = {bare(p) for g in split.train for p in g["prompts"]}
    assert not trained_prompts & forbidden
    # The exact filter (reflex-tiny's run) leaves near-copies such as 'say "hi"' in.
    exact = split_by("exact")
    assert 0 < exact.counts["removed_eval_prompt_pairs"] < split.counts["removed_eval_prompt_pairs"]
    assert any(p == 'say "hi"' for g in exact.train for p in g["prompts"])
    assert not any(p == 'say "hi"' for g in split.train for p in g["prompts"])
    # the eval tasks with a near-copy in the corpus (reported apart from the others)
    corpus_prompts = [p for g in exact.train for p in g["prompts"]]
    tags = near_copy_tags(corpus_prompts)
    print("near-copy tasks:", tags)
    assert 0 < len(tags) < 41
    held = {tuple(e["words"]) for e in split.heldout}
    assert not held & {tuple(f"{w:08x}" for w in g["program"].words) for g in split.train}
    assert len(held) == round(0.05 * split.counts["distinct_programs"])


@pytest.mark.slow
def test_resume_continues_to_the_same_model(trained, tmp_path):
    """Stop at step 15, resume: the result equals the run that never stopped."""
    full, _ = trained
    threads = torch.get_num_threads()
    try:
        first = train.main(["--out", str(tmp_path), *TINY, "--stop-at", "15"])
        assert first["step"] == 15
        assert torch.load(tmp_path / "train_state.pt", weights_only=False)["step"] == 15
        # Only where, --resume and the device: every other setting comes from the saved run.
        second = train.main(["--out", str(tmp_path), "--resume", "--device", "cpu", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert second["step"] == 30
    steps = [r["step"] for r in curve(tmp_path) if "loss" in r]
    assert steps == list(range(1, 31))
    a = torch.load(full / "reflex.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "reflex.pt", weights_only=True)["state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_frozen_backbone_recipe(trained, tmp_path):
    """--backbone: a pretrained Qwen2 is loaded and frozen; only the Reflex modules
    learn, and reflex.pt names the backbone instead of shipping one."""
    full, _ = trained
    source = full / "backbone"
    threads = torch.get_num_threads()
    try:
        result = train.main(
            [
                "--out",
                str(tmp_path),
                *TINY,
                "--backbone",
                str(source),
                "--steps",
                "4",
                "--eval-every",
                "4",
                "--save-every",
                "4",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert result["step"] == 4
    assert not (tmp_path / "backbone").exists()
    saved = torch.load(tmp_path / "reflex.pt", weights_only=True)
    assert saved["config"]["backbone_id"] == str(source.resolve())
    model, _, _ = load_model(tmp_path / "reflex.pt", device="cpu")
    original, _, _ = load_model(full / "reflex.pt", device="cpu")
    for (name, a), b in zip(model.backbone.state_dict().items(), original.backbone.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # frozen: unchanged
    assert not torch.equal(
        saved["state"]["embed_head.weight"],
        torch.load(full / "reflex.pt", weights_only=True)["state"]["embed_head.weight"],
    )


def test_shared_options_default_as_the_mlx_trainer():
    """`python -m reflex_torch.train` and `reflex-mlx train` take each shared option's
    default from reflex_core.training.TrainDefaults (min LR: the LR / 100)."""
    import dataclasses

    from reflex_core.training import TrainDefaults

    args = train.parse_args(["--out", "x", "--backbone", "some/backbone"])
    for option in dataclasses.fields(TrainDefaults):
        default = getattr(TrainDefaults(), option.name)
        assert getattr(args, option.name) == (args.lr / 100 if option.name == "min_lr" else default)
    assert train.parse_args(["--out", "x"]).lr == train.FROM_SCRATCH_LR
