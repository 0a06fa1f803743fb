"""Train a Reflex model on the corpus and write it in the released format.

    python -m reflex_torch.train --out runs/small --steps 8000 --batch 256 --time-limit 540
    python -m reflex_torch.train --out runs/small --resume          # continue a stopped run
    python -m reflex_torch.heldout runs/small                      # score the held-out programs

Without --backbone a new small Qwen2 (and its own tokenizer) is trained from
scratch together with the adapters; with --backbone a pretrained decoder
(Qwen2, Llama, Mistral or Qwen3: reflex_core.spec.SUPPORTED_BACKBONES) is
loaded, frozen, and only the Reflex modules learn (the released recipe,
docs/design.md §7). Samples are (state, word) cycles from replaying every corpus
program on the shared machine; 5% of the distinct programs are held out, and
no prompt equal to one of the evaluation prompts (up to case, spacing and, by
default, punctuation and quotes) is trained on.

OUT gets reflex.pt (docs/design.md §2 format), backbone/ (the from-scratch
backbone and tokenizer, which `load_model` finds via backbone_id "backbone"),
heldout.json, curve.jsonl and train_state.pt (for --resume). One process at a
time holds OUT (torchrun's rank 0 for the job); a checkpoint writes the state
last, so a kill leaves either the last whole checkpoint to --resume or a folder
that the same command without --resume starts anew in.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from reflex_core import training
from reflex_core.corpus import find_corpus
from reflex_core.evaluation import EVAL_FILTERS
from reflex_core.files import (
    OutputError,
    append_record,
    keep_records,
    output_lock,
    remove_temporaries,
    write_atomically,
)
from reflex_core.hub import named_backbone_dir, resolve_backbone
from reflex_core.shapes import TINY, checkpoint_config, decoder_config
from reflex_core.spec import (
    BACKBONE_DIR,
    IDENTITY_KEY,
    MAX_INSTR_TOKENS,
    SYSTEM_PROMPT,
    ReflexArgs,
    backbone_identity,
)
from reflex_core.training import (
    HELDOUT_FILE,
    Batch,
    DataError,
    SampleTable,
    Split,
    make_pairs,
    restore_sampler,
    sampler,
    sampler_state,
    split_report,
)

from .heldout import top1
from .model import Reflex, ReflexModel

STATE_FILE = "train_state.pt"
CURVE_FILE = "curve.jsonl"
MAX_FLOAT32_BACKBONE_BYTES = 16 * 2**20  # bigger from-scratch backbones are saved in bfloat16
# The options both trainers take default as `reflex-mlx train` does; a backbone trained
# from scratch (no --backbone) learns at a higher rate unless --lr is given.
DEFAULTS = training.TrainDefaults()
FROM_SCRATCH_LR = 1e-3

# On --resume these always come from the saved run, so the data split and the model
# are the same; every other setting does too unless given again on the command line.
RUN_DEFINING_ARGS = (
    "corpus",
    "families",
    "exclude_families",
    "max_programs",
    "heldout_fraction",
    "seed",
    "eval_filter",
    "backbone",
    "hidden",
    "layers",
    "heads",
    "kv_heads",
    "intermediate",
    "vocab",
    "rope_theta",
    "embed_dim",
    "adapter_mlp_ratio",
    "inject_every",
    "max_instr_tokens",
    "temperature",
    "eval_samples",
)
# Per invocation: where, on what, and when to stop this time.
NOT_RESUMED = ("out", "resume", "stop_at", "time_limit", "device", "threads")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    pretrained = args.backbone is not None
    if args.embed_dim is None:
        args.embed_dim = 256 if pretrained else 128
    if args.lr is None:
        args.lr = DEFAULTS.lr if pretrained else FROM_SCRATCH_LR
    if args.min_lr is None:
        args.min_lr = args.lr / 100
    return args


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the options present in argv (--opt value or --opt=value)."""
    given = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if any(tok == opt or tok.startswith(opt + "=") for tok in argv):
                given.add(action.dest)
    return given


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    # data
    p.add_argument("--corpus", default=None, help="corpus folder (default: find_corpus())")
    p.add_argument("--families", default=None, help="comma-separated families to train on (default: all)")
    p.add_argument(
        "--exclude-families",
        default=None,
        help="comma-separated families never trained on nor held out (a base for fine-tuning)",
    )
    p.add_argument(
        "--max-programs",
        type=int,
        default=DEFAULTS.max_programs,
        help="random subset of distinct programs (tests)",
    )
    p.add_argument("--heldout-fraction", type=float, default=DEFAULTS.heldout_fraction)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument(
        "--eval-filter",
        choices=sorted(EVAL_FILTERS),
        default=DEFAULTS.eval_filter,
        help="which training prompts count as an evaluation prompt and are dropped: "
        "equal up to case and spacing (exact), or also up to punctuation and "
        "quotes (punctuation: 'say \"hi\"' is 'say hi')",
    )
    # model
    p.add_argument(
        "--backbone",
        default=None,
        help="pretrained decoder (hub id, folder, or a named local backbone such as "
        "SmolLM2-135M-Instruct-Q4_1), frozen",
    )
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--rope-theta", type=float, default=1e6)
    p.add_argument("--embed-dim", type=int, default=None, help="default 128 from scratch, 256 pretrained")
    p.add_argument("--adapter-mlp-ratio", type=int, default=4)
    p.add_argument("--inject-every", type=int, default=4)
    p.add_argument("--max-instr-tokens", type=int, default=MAX_INSTR_TOKENS)
    # optimisation
    p.add_argument("--steps", type=int, default=DEFAULTS.steps)
    p.add_argument(
        "--batch", type=int, default=DEFAULTS.batch, help="the global batch (split over torchrun ranks)"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"default {FROM_SCRATCH_LR:g} from scratch, {DEFAULTS.lr:g} pretrained",
    )
    p.add_argument("--min-lr", type=float, default=DEFAULTS.min_lr, help="default lr / 100")
    p.add_argument("--warmup", type=int, default=DEFAULTS.warmup)
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    p.add_argument("--grad-clip", type=float, default=DEFAULTS.grad_clip)
    p.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 autocast of the forward (auto: on with CUDA)",
    )
    p.add_argument("--device", default=None)
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (1 avoids stalls on a busy small CPU)"
    )
    # progress, checkpoints
    p.add_argument("--log-every", type=int, default=DEFAULTS.log_every)
    p.add_argument("--eval-every", type=int, default=DEFAULTS.eval_every)
    p.add_argument("--eval-samples", type=int, default=DEFAULTS.eval_samples)
    p.add_argument("--eval-batch", type=int, default=DEFAULTS.eval_batch)
    p.add_argument("--save-every", type=int, default=DEFAULTS.save_every)
    p.add_argument(
        "--save-backbone-dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help=f"auto: float32 unless that exceeds {MAX_FLOAT32_BACKBONE_BYTES >> 20} MiB",
    )
    p.add_argument(
        "--save-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="dtype of reflex.pt's float tensors (float32 as released; bfloat16 halves the file, "
        "and the loaders cast it back to float32)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULTS.time_limit,
        help="stop cleanly (saving) after this many seconds",
    )
    p.add_argument(
        "--stop-at", type=int, default=DEFAULTS.stop_at, help="stop cleanly (saving) after this step"
    )
    return p


# ----------------------------------------------------------------------------- data


def split_programs(args) -> Split:
    """The corpus's programs, read and split as reflex_core.training does for both trainers."""
    root = Path(args.corpus) if args.corpus else find_corpus()
    if root is None or not (root / "programs").is_dir():
        sys.exit(
            f"error: no training corpus at {root or '(none found)'}: pass --corpus DIR or set REFLEX_CORPUS"
        )
    families = args.families.split(",") if args.families else ()
    exclude = args.exclude_families.split(",") if args.exclude_families else ()
    try:
        return training.read_split(
            [root],
            heldout_fraction=args.heldout_fraction,
            seed=args.seed,
            eval_filter=args.eval_filter,
            max_programs=args.max_programs,
            families=families,
            exclude=exclude,
        )
    except DataError as err:
        sys.exit(f"error: {err}")


def on_device(batch: Batch, device) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.from_numpy(a).to(device, non_blocking=True)
        for a in (batch.input_ids, batch.attention_mask, batch.states, batch.targets)
    )


# ---------------------------------------------------------------------------- model


def build_backbone(args, train_prompts: list[str], device, resume: bool):
    """(causal LM or None, base model, tokenizer, backbone_id)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .load import load_backbone

    if args.backbone:  # the released recipe: a pretrained backbone, frozen, bf16 on CUDA
        source = resolve_backbone(args.backbone)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        backbone = load_backbone(source, dtype).to(device)
        backbone.requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(source)
        if named_backbone_dir(args.backbone) is not None:
            backbone_id = args.backbone  # a name every machine resolves to its own built copy
        else:
            backbone_id = str(Path(source).resolve()) if Path(source).exists() else source
        return None, backbone, tokenizer, backbone_id

    from .tokenizer import train_tokenizer

    if resume:
        tokenizer = AutoTokenizer.from_pretrained(args.out / BACKBONE_DIR)
    else:  # on the texts as the model sees them, so the fixed system message merges into few tokens
        texts = [f"system\n{SYSTEM_PROMPT}\nuser\n{p}\nassistant\n" for p in train_prompts]
        tokenizer = as_loaded(train_tokenizer(texts, args.vocab))
    shape = TINY.with_(
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate,
        rope_theta=args.rope_theta,
    )
    qwen_config = AutoConfig.for_model(
        **decoder_config(
            shape,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
    )
    causal = AutoModelForCausalLM.from_config(qwen_config).to(device)
    return causal, causal.model, tokenizer, BACKBONE_DIR


def as_loaded(tokenizer):
    """The tokenizer exactly as AutoTokenizer will load it from the saved backbone folder.

    transformers 5 loads a folder whose config says qwen2 as Qwen2Tokenizer, which
    keeps the vocab and merges but rebuilds Qwen2's own normalizer and pre-tokenizer.
    Training with the reloaded one makes training and inference see the same ids
    (and the tokenizer.json saved from it spells that pipeline out for any loader).
    """
    from transformers import AutoTokenizer, Qwen2Config

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        Qwen2Config().save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)


def lr_at(step: int, args) -> float:
    return training.lr_at(step, lr=args.lr, min_lr=args.min_lr, warmup=args.warmup, steps=args.steps)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() counts tied weights once


# ------------------------------------------------------------------------ saving


def atomic_save(obj, path: Path) -> None:
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def write_release(out: Path, reflex: Reflex, config: dict, causal, tokenizer, args, identity: dict) -> None:
    """OUT/reflex.pt as released (float32 unless --save-dtype, int64 instr_words; the
    config holds the released keys only, the backbone's identity sits beside it) and,
    from scratch, OUT/backbone/."""
    floats = getattr(torch, args.save_dtype)
    state = {
        k: (
            v.detach().to("cpu", torch.int64) if k == "instr_words" else v.detach().to("cpu", floats)
        ).contiguous()
        for k, v in reflex.state_dict().items()
    }
    atomic_save({"state": state, "config": dict(config), IDENTITY_KEY: identity}, out / "reflex.pt")
    if causal is None:
        return
    dtype = args.save_backbone_dtype
    if dtype == "auto":
        dtype = "float32" if 4 * count_params(causal) <= MAX_FLOAT32_BACKBONE_BYTES else "bfloat16"
    from transformers import AutoModelForCausalLM

    copy = AutoModelForCausalLM.from_config(causal.config).to(
        getattr(torch, dtype)
    )  # a hook-free copy on the CPU
    copy.load_state_dict(causal.state_dict())
    tmp, old, final = out / (BACKBONE_DIR + ".tmp"), out / (BACKBONE_DIR + ".old"), out / BACKBONE_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    copy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_state(out: Path, step: int, model, optimizer, rng, args) -> None:
    trainable = (
        {k: v for k, v in model.state_dict().items()} if args.backbone is None else model.reflex.state_dict()
    )
    atomic_save(
        {
            "step": step,
            "model": trainable,
            "optimizer": optimizer.state_dict(),
            "sampler": sampler_state(rng),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        },
        out / STATE_FILE,
    )


def log(out: Path, record: dict, line: str) -> None:
    print(line, flush=True)
    append_record(out / CURVE_FILE, record)


# ------------------------------------------------------------------ data parallel


class Ranks:
    """This process's place in a torchrun job (one process, rank 0 of 1, without one).

    Every rank draws the same global batch (the same seed) and trains on its
    own contiguous shard of it (Batch.shard); DDP averages the gradients, so a
    step equals the single-process step on the whole global batch. Rank 0
    alone evaluates, writes and prints."""

    def __init__(self, device_arg: str | None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and (device_arg is None or device_arg.startswith("cuda"))
        if self.world > 1 and cuda:
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device(device_arg or ("cuda" if cuda else "cpu"))
        self.group = None
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.group = dist

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The value averaged over ranks (the global batch's loss)."""
        if self.world == 1:
            return value
        value = value.detach().clone()
        self.group.all_reduce(value)
        return value / self.world

    def wait(self) -> None:
        if self.world > 1:
            self.group.barrier()

    def close(self) -> None:
        if self.world > 1:
            self.group.destroy_process_group()


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    started = time.time()
    args = parse_args(argv)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's other ranks: rank 0 holds OUT
        return _main(args, argv, started)
    try:
        with output_lock(args.out, "train"):
            recover(args.out, args.resume)
            return _main(args, argv, started)
    except OutputError as err:
        sys.exit(f"error: {err}")


def recover(out: Path, resume: bool) -> None:
    """OUT as a killed run left it, made whole (OUT locked): half-written files go, a
    backbone/ swap cut short is finished; a fresh run drops the old curve and state, so
    that nothing of an earlier run mixes into this one."""
    if not out.is_dir():
        return
    remove_temporaries(out)
    tmp, old, final = out / (BACKBONE_DIR + ".tmp"), out / (BACKBONE_DIR + ".old"), out / BACKBONE_DIR
    if not final.exists() and old.is_dir():  # killed between write_release's two renames
        os.replace(tmp if tmp.is_dir() else old, final)  # tmp was whole before the first
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    if not resume:
        for name in (CURVE_FILE, STATE_FILE):
            (out / name).unlink(missing_ok=True)


def _main(args: argparse.Namespace, argv: list[str] | None, started: float) -> dict:
    out = args.out
    saved = None
    if args.resume:
        if not (out / STATE_FILE).exists():
            sys.exit(f"error: --resume but no {out / STATE_FILE}")
        saved = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
        if not isinstance(saved.get("sampler"), dict):
            sys.exit(
                f"error: {out / STATE_FILE} was written by an older trainer (a torch sampler); start anew"
            )
        given = given_options(build_parser(), sys.argv[1:] if argv is None else argv)
        before = {"eval_filter": "exact"}  # runs saved before the option existed
        for key, value in {**before, **saved["args"]}.items():
            if key in RUN_DEFINING_ARGS or (key not in given and key not in NOT_RESUMED):
                setattr(args, key, value)
    ranks = Ranks(args.device)
    device = ranks.device
    if args.batch % ranks.world:
        sys.exit(f"error: --batch {args.batch} (the global batch) does not split over {ranks.world} ranks")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision("high")  # TF32 on CUDA
    if args.threads:
        torch.set_num_threads(args.threads)
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and device.type == "cuda")
    torch.manual_seed(args.seed)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every save
    say = print if ranks.main else (lambda *a, **k: None)

    # Data: the split, the held-out list, the codebook over every cycle of the corpus.
    split = split_programs(args)
    c = split.counts
    if ranks.main:
        write_atomically(
            out / HELDOUT_FILE,
            json.dumps(
                {
                    "seed": args.seed,
                    "fraction": args.heldout_fraction,
                    "counts": c,
                    "programs": split.heldout,
                },
                indent=1,
            ),
        )
    held_cycles = split.held_cycles
    train_prompts = list(dict.fromkeys(p for g in split.train for p in g["prompts"]))
    train_cycles = split.cycles
    codebook = sorted({w for cycles in train_cycles + held_cycles for _, w in cycles})

    causal, backbone, tokenizer, backbone_id = build_backbone(args, train_prompts, device, args.resume)
    shape = TINY.with_(
        hidden=backbone.config.hidden_size,
        inject_every=args.inject_every,
        mlp_ratio=args.adapter_mlp_ratio,
        embed_dim=args.embed_dim,
        num_instrs=len(codebook),
    )
    config = checkpoint_config(shape, backbone_id, max_instr_tokens=args.max_instr_tokens)
    identity = backbone_identity(backbone.config.to_dict())
    reflex_args = ReflexArgs.from_config(config, backbone.config.num_hidden_layers)
    if not reflex_args.adapter_layers:
        sys.exit(
            f"error: no adapter fits: --inject-every {args.inject_every} is more than the backbone's "
            f"{backbone.config.num_hidden_layers} layers"
        )
    reflex = Reflex(reflex_args)
    reflex.instr_words.copy_(torch.tensor(codebook, dtype=torch.int64))
    reflex.to(device)
    model = ReflexModel(backbone, reflex)
    samples = SampleTable(split.train, train_cycles, codebook, tokenizer, config)
    del train_cycles
    split.cycles.clear()  # the table holds them as arrays now
    eval_pairs = make_pairs(split.heldout, held_cycles, all_prompts=True, max_samples=args.eval_samples)

    for line in split_report(c, split.heldout, held_cycles):
        say(line + (f" -> {out / HELDOUT_FILE}" if line.startswith("held out") else ""))
    say(
        f"train: {c['train_programs']} programs, {samples.num_prompts} distinct prompts "
        f"({int(samples.count.sum())} program-prompt pairs, longest {samples.max_prompt_len} tokens, "
        f"{samples.truncated} truncated), {len(samples)} samples; codebook {len(codebook)} words"
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    say(
        f"backbone {count_params(backbone) / 1e6:.2f}M params "
        f"({'frozen ' + backbone_id if args.backbone else 'from scratch'}), "
        f"reflex {count_params(reflex) / 1e6:.2f}M, "
        f"trainable {sum(p.numel() for p in trainable) / 1e6:.2f}M; "
        f"device {device}{', bf16 autocast' if use_bf16 else ''}",
        flush=True,
    )
    if ranks.world > 1:
        share = args.batch // ranks.world
        say(f"data parallel: {ranks.world} ranks, each trains on its {share} rows of every global batch")

    # AdamW with weight decay on matrices only (not on norms, biases, gates).
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    rng = sampler(args.seed)
    step = 0
    if saved is not None:
        target = model if args.backbone is None else reflex
        target.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rng = restore_sampler(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        step = saved["step"]
        if ranks.main:
            keep_records(out / CURVE_FILE, lambda r: type(r.get("step")) is int and r["step"] <= step)
        say(f"resumed at step {step}", flush=True)
    del saved
    forward = ranks.wrap(model)

    def evaluate() -> float:
        model.eval()
        correct, _ = top1(model, tokenizer, config, eval_pairs, args.eval_batch)
        model.train()
        accuracy = correct / max(len(eval_pairs), 1)
        log(
            out,
            {"step": step, "heldout_top1": accuracy, "n": len(eval_pairs), "elapsed": time.time() - started},
            f"step {step} | held-out top-1 {100 * accuracy:.2f}% ({len(eval_pairs)} cycle-prompt pairs)",
        )
        return accuracy

    def save() -> None:
        write_release(out, reflex, config, causal, tokenizer, args, identity)
        write_state(out, step, model, optimizer, rng, args)

    model.train()
    window_start, window_steps, evaluated_at, stop_reason = time.time(), 0, None, "done"
    while step < args.steps:
        if reason := training.stop_reason(started, step, args.time_limit, args.stop_at):
            stop_reason = reason
            break
        lr = lr_at(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids, mask, states, targets = on_device(
            samples.draw(args.batch, rng).shard(ranks.rank, ranks.world), device
        )
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pred = forward(ids, mask, states)
        loss = F.cross_entropy(reflex.scores(pred) / args.temperature, targets)  # InfoNCE, whole codebook
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip)
        optimizer.step()
        step += 1
        window_steps += 1

        if step % args.log_every == 0 or step == 1:
            mean_loss = ranks.mean(loss).item()
            rate = window_steps / (time.time() - window_start)
            elapsed = time.time() - started
            if ranks.main:
                log(
                    out,
                    {"step": step, "loss": mean_loss, "lr": lr, "steps_per_s": rate, "elapsed": elapsed},
                    f"step {step}/{args.steps} | loss {mean_loss:.4f} | lr {lr:.2e} | "
                    f"{rate:.2f} steps/s | {elapsed:.0f}s",
                )
            window_start, window_steps = time.time(), 0
        if step % args.eval_every == 0:
            if ranks.main:
                evaluate()
            evaluated_at = step
        if step % args.save_every == 0 and ranks.main:
            save()
        if step % args.eval_every == 0 or step % args.save_every == 0:
            ranks.wait()
            window_start, window_steps = time.time(), 0  # steps/s counts training steps only

    if ranks.main:
        if evaluated_at != step:
            evaluate()
        save()
    ranks.wait()
    ranks.close()
    say(
        f"stopped at step {step}/{args.steps} ({stop_reason}); wrote {out}/reflex.pt"
        + (f", {out}/{BACKBONE_DIR}/" if causal is not None else "")
        + f", {STATE_FILE} ({time.time() - started:.0f}s)",
        flush=True,
    )
    return {
        "step": step,
        "counts": c,
        "config": config,
        "model": model,
        "tokenizer": tokenizer,
        "eval_pairs": eval_pairs,
    }


if __name__ == "__main__":
    main()
