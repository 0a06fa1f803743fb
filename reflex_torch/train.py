"""Train a Reflex model on the corpus and write it in the released format.

    python -m reflex_torch.train --out runs/small --steps 8000 --batch 256 --time-limit 540
    reflex-mlx train --backend torch --out runs/small ...           # the same, through the one CLI
    python -m reflex_torch.train --out runs/small --resume          # continue a stopped run
    python -m reflex_torch.heldout runs/small                      # score the held-out programs

Without --backbone a new small Qwen2 (and its own tokenizer) is trained from
scratch together with the adapters; with --backbone a pretrained decoder
(Qwen2, Llama, Mistral or Qwen3: reflex_core.spec.SUPPORTED_BACKBONES) is
loaded, frozen, and only the Reflex modules learn (the released recipe,
docs/design.md §7). Samples are (state, word) cycles from replaying every corpus
program on the shared machine; 5% of the distinct programs are held out, and
no prompt equal to one of the evaluation prompts (up to case, spacing and, by
default, punctuation and quotes) is trained on. The options, the data and
the training loop are reflex_core.training's (`fit`, over this module's `Run`),
shared with the MLX trainer.

OUT gets reflex.pt (docs/design.md §2 format), backbone/ (the from-scratch
backbone and tokenizer, which `load_model` finds via backbone_id "backbone"),
heldout.json, curve.jsonl and train_state.pt (for --resume). One process at a
time holds OUT (torchrun's rank 0 for the job); a checkpoint writes the state
last, so a kill leaves either the last whole checkpoint to --resume or a folder
that the same command without --resume starts anew in.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from reflex_core.files import remove_temporaries, write_atomically
from reflex_core.hub import named_backbone_dir, resolve_backbone
from reflex_core.shapes import TINY, checkpoint_config, decoder_config
from reflex_core.spec import BACKBONE_DIR, IDENTITY_KEY, SYSTEM_PROMPT, ReflexArgs, backbone_identity
from reflex_core.training import (
    CURVE_FILE,
    FROM_SCRATCH_LR,
    MAX_FLOAT32_BACKBONE_BYTES,
    Batch,
    DataError,
    SampleTable,
    Split,
    TrainError,
    make_pairs,
    restore_sampler,
    sampler_state,
    split_report,
)

from .heldout import top1
from .model import Reflex, ReflexModel

STATE_FILE = "train_state.pt"


@dataclasses.dataclass(kw_only=True)
class Options(training.TorchOptions, training.TrainDefaults):
    """The torch trainer's options: both trainers' and its own (reflex_core.training)."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m reflex_torch.train` (torchrun's entry), each
    option and its default from Options' fields."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help=f"continue from OUT/{STATE_FILE}")
    for name, f in training.options_of(Options).items():
        kind = f.type.removesuffix(" | None")
        flags = ["--" + name.replace("_", "-")] + (["--corpus"] if name == "data" else [])
        shown = f.metadata["help"] + ("" if f.default is None else " (default: %(default)s)")
        if kind == "bool":
            p.add_argument(*flags, dest=name, action="store_true", help=f.metadata["help"])
        elif name == "data":  # repeatable; none: the corpus find_corpus() finds
            p.add_argument(
                *flags, dest=name, action="append", help=f.metadata["help"] + " (default: the corpus)"
            )
        elif kind == "tuple[str, ...]":
            split = lambda text: tuple(t for t in text.split(",") if t)
            p.add_argument(*flags, dest=name, type=split, default=f.default, help=f.metadata["help"])
        else:
            kw = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {"type": _TYPES[kind]}
            p.add_argument(*flags, dest=name, default=f.default, help=shown, **kw)
    return p


_TYPES = {"int": int, "float": float, "str": str}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    return finish(build_parser().parse_args(argv), given_options(build_parser(), argv))


def finish(args: argparse.Namespace, given) -> argparse.Namespace:
    """The defaults that depend on other options: a backbone from scratch learns at
    FROM_SCRATCH_LR unless --lr is given, and embeds in 128 dimensions (256 pretrained)."""
    pretrained = args.backbone is not None
    args.data = tuple(args.data or ())
    if args.embed_dim is None:
        args.embed_dim = 256 if pretrained else 128
    if "lr" not in given and not pretrained:
        args.lr = FROM_SCRATCH_LR
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


# ----------------------------------------------------------------------------- data


def split_programs(args) -> Split:
    """The data's programs (the corpus find_corpus() finds without --data), read and
    split as reflex_core.training does for both trainers."""
    paths = list(args.data)
    if not paths:
        root = find_corpus()
        if root is None:
            raise TrainError("no training corpus found: pass --data DIR or set REFLEX_CORPUS")
        paths = [root]
    try:
        return training.read_split(
            paths,
            heldout_fraction=args.heldout_fraction,
            seed=args.seed,
            eval_filter=args.eval_filter,
            max_programs=args.max_programs,
            families=args.families,
            exclude=args.exclude_families,
            skip_failing=args.skip_failing,
        )
    except DataError as err:
        raise TrainError(str(err)) from None


def on_device(batch: Batch, device) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.from_numpy(a).to(device, non_blocking=True)
        for a in (batch.input_ids, batch.attention_mask, batch.states, batch.targets)
    )


# ---------------------------------------------------------------------------- model


def build_backbone(args, train_prompts: list[str], device, resume: bool):
    """(causal LM or None, base model, tokenizer, backbone_id)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .loader import load_backbone

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
    record = {
        k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        for k, v in vars(args).items()
    }
    atomic_save(
        {
            "step": step,
            "model": trainable,
            "optimizer": optimizer.state_dict(),
            "sampler": sampler_state(rng),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "args": record,
        },
        out / STATE_FILE,
    )


def read_state(out: Path, args: argparse.Namespace, given) -> tuple[dict, argparse.Namespace]:
    """(the saved state, the options resumed: reflex_core.training.resumed_options)."""
    path = out / STATE_FILE
    if not path.exists():
        raise TrainError(f"--resume but no {path}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved.get("sampler"), dict):
        raise TrainError(f"{path} was written by an older trainer (a torch sampler); start anew")
    old = {"eval_filter": "exact", **saved["args"]}  # runs saved before the option existed
    if "corpus" in old:  # and before --data
        corpus = old.pop("corpus")
        old["data"] = [corpus] if corpus else []
    for name in ("families", "exclude_families"):
        if isinstance(old.get(name), str) or old.get(name) is None:
            old[name] = [t for t in (old.get(name) or "").split(",") if t]
    old = {k: v for k, v in old.items() if k not in ("out", "resume")}
    old = training.saved_options(old, Options, str(path))
    merged = training.resumed_options(old, vars(args), given)
    for name in ("data", "families", "exclude_families"):
        merged[name] = tuple(merged[name])
    return saved, argparse.Namespace(**merged)


# ------------------------------------------------------------------ data parallel


def world_size() -> int:
    """The number of ranks torchrun started this process among (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Ranks:
    """This process's place in a torchrun job (one process, rank 0 of 1, without one).

    Every rank draws the same global batch (the same seed) and trains on its
    own contiguous shard of it (Batch.shard); DDP averages the gradients, so a
    step equals the single-process step on the whole global batch. Rank 0
    alone evaluates, writes and prints."""

    def __init__(self, device_arg: str | None):
        self.world = world_size()
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
    """`python -m reflex_torch.train` (and each torchrun rank): errors are one line."""
    started = time.time()
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(vars(parse_args(argv)), given_options(build_parser(), argv), started)
    except TrainError as err:
        sys.exit(f"error: {err}")


def run(options: dict, given, started: float | None = None) -> dict:
    """Train (or resume) with these options (every Options field, out and resume),
    `given` naming those the user set; rank 0 holds OUT. TrainError in one line."""
    started = time.time() if started is None else started
    args = finish(argparse.Namespace(**options), given)
    args.out = Path(args.out)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's other ranks: rank 0 holds OUT
        return _main(args, given, started)
    with training.holding(args.out):
        recover(args.out, args.resume)
        return _main(args, given, started)


def recover(out: Path, resume: bool) -> None:
    """OUT as a killed run left it, made whole (OUT held): half-written files go, a
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


class Run:
    """reflex_core.training.fit's Steps in torch: a DDP-wrapped forward under bf16
    autocast where asked, InfoNCE over the whole codebook, clipping, AdamW."""

    def __init__(self, ranks, model, optimizer, args, use_bf16: bool, evaluate, save):
        self.ranks, self.rank, self.world = ranks, ranks.rank, ranks.world
        self.model, self.forward, self.optimizer, self.args = model, ranks.wrap(model), optimizer, args
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.use_bf16, self.evaluate, self.write = use_bf16, evaluate, save

    def step(self, batch: Batch, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ids, mask, states, targets = on_device(batch, self.ranks.device)
        with torch.autocast(self.ranks.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            pred = self.forward(ids, mask, states)
        loss = F.cross_entropy(self.model.reflex.scores(pred) / self.args.temperature, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.args.grad_clip)
        self.optimizer.step()
        return loss

    def mean(self, loss: torch.Tensor) -> float:
        return self.ranks.mean(loss).item()

    def save(self, step: int, rng) -> None:
        self.write(step, rng)

    def barrier(self) -> None:
        self.ranks.wait()


def _main(args: argparse.Namespace, given, started: float) -> dict:
    out = args.out
    saved = None
    if args.resume:
        saved, args = read_state(out, args, given)
    training.check_values(vars(args), Options)
    if args.batch % world_size():  # said by every rank before any joins the group
        raise TrainError(f"--batch {args.batch} (the global batch) does not split over {world_size()} ranks")
    ranks = Ranks(args.device)
    device = ranks.device
    out.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision("high")  # TF32 on CUDA
    if args.threads:
        torch.set_num_threads(args.threads)
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and device.type == "cuda")
    torch.manual_seed(args.seed)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every save
    say = (lambda *a: print(*a, flush=True)) if ranks.main else (lambda *a: None)

    # Data: the split, the held-out list, the codebook over every cycle of the data.
    split = split_programs(args)
    c = split.counts
    if ranks.main:
        training.write_heldout(out, args.seed, args.heldout_fraction, c, split.heldout)
    held_cycles = split.held_cycles
    train_prompts = list(dict.fromkeys(p for g in split.train for p in g["prompts"]))
    train_cycles = split.cycles
    codebook, _ = training.grow_codebook([], (w for cycles in train_cycles + held_cycles for _, w in cycles))

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
        raise TrainError(
            f"no adapter fits: --inject-every {args.inject_every} is more than the backbone's "
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
        say(line + (f" -> {out / training.HELDOUT_FILE}" if line.startswith("held out") else ""))
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
        f"device {device}{', bf16 autocast' if use_bf16 else ''}"
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
    rng, step = None, 0
    if saved is not None:
        target = model if args.backbone is None else reflex
        target.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rng = restore_sampler(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        step = saved["step"]
    del saved

    def evaluate() -> dict | None:
        if not eval_pairs:
            return None
        model.eval()
        correct, _ = top1(model, tokenizer, config, eval_pairs, args.eval_batch)
        model.train()
        return {"heldout_top1": correct / len(eval_pairs), "n": len(eval_pairs)}

    def save(step: int, rng) -> None:  # the state last: a kill leaves the last whole checkpoint
        write_release(out, reflex, config, causal, tokenizer, args, identity)
        write_state(out, step, model, optimizer, rng, args)

    model.train()
    written = (
        f"{out}/reflex.pt" + (f", {out}/{BACKBONE_DIR}/" if causal is not None else "") + f", {STATE_FILE}"
    )
    result = training.fit(
        Run(ranks, model, optimizer, args, use_bf16, evaluate, save),
        samples, args, out, step=step, rng=rng, started=started, say=say, written=written,
    )  # fmt: skip
    ranks.close()
    return {
        **result,
        "counts": c,
        "config": config,
        "model": model,
        "tokenizer": tokenizer,
        "eval_pairs": eval_pairs,
    }


if __name__ == "__main__":
    main()
