"""What every bench shares: inputs (states, prompts), timing, and reports on disk."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from reflex_core import files
from reflex_core.spec import MAX_INSTR_TOKENS

REPO = Path(__file__).resolve().parent.parent
PROMPT_LEN = 60
PAD_TO = MAX_INSTR_TOKENS  # the released reference pads to it
PAD_ID = 151643  # Qwen2.5's <|endoftext|> (clipped to the vocab of smaller shapes)


class CorpusMissing(Exception):
    pass


def corpus_states(n: int, corpus: str | None = None) -> tuple[np.ndarray, list[str]]:
    """n distinct machine states from replayed corpus programs, spread over every family.

    The longest program of each family is replayed; each contributes evenly
    spaced cycles, taken round-robin across families until n are chosen.
    """
    from reflex_core.corpus import find_corpus, load_programs, replay

    root = Path(corpus) if corpus else find_corpus() or REPO / ".corpus"
    if not (Path(root) / "programs").is_dir():
        raise CorpusMissing("corpus not found: pass --corpus PATH (the folder holding programs/)")
    by_family: dict[str, object] = {}
    for program in load_programs(root):
        best = by_family.get(program.family)
        if best is None or program.num_ops > best.num_ops:
            by_family[program.family] = program
    per_family = math.ceil(n / len(by_family))
    queues = []
    for family in sorted(by_family):
        states = [s for s, _ in replay(by_family[family])]
        picks = np.unique(np.linspace(0, len(states) - 1, min(per_family * 2, len(states))).astype(int))
        queues.append([(family, states[i]) for i in picks])
    chosen, seen = [], set()
    for rank in range(max(len(q) for q in queues)):
        for family, state in (q[rank] for q in queues if rank < len(q)):
            if tuple(state) not in seen:  # every program starts from the same state
                seen.add(tuple(state))
                chosen.append((family, state))
    chosen = chosen[:n]
    if len(chosen) < n:
        raise CorpusMissing(f"the corpus gave only {len(chosen)} states")
    return np.array([s for _, s in chosen], dtype=np.uint32), [f for f, _ in chosen]


def random_states(n: int, seed: int = 0) -> np.ndarray:
    """n states of uniformly random words."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, size=(n, 65), dtype=np.uint64).astype(np.uint32)


def bench_states(n: int, corpus: str | None, seed: int) -> np.ndarray:
    """n machine states: replayed corpus programs when a corpus is found, else random words."""
    try:
        return corpus_states(n, corpus)[0]
    except CorpusMissing:
        return random_states(n, seed)


def prompt_ids(vocab: int, seed: int, length: int = PROMPT_LEN) -> np.ndarray:
    """One random prompt of token ids below the pad id."""
    return np.random.default_rng(seed + 1).integers(0, min(vocab, PAD_ID), length)


def prompt_set(vocab: int, seed: int, count: int) -> list[np.ndarray]:
    """count random prompts: the first PROMPT_LEN tokens long, the others 50..70."""
    rng = np.random.default_rng(seed + 1)
    lengths = [PROMPT_LEN] + list(rng.integers(50, 71, count - 1))
    top = min(vocab, PAD_ID)
    return [rng.integers(0, top, n) for n in lengths]


def torch_sync():
    """torch.cuda.synchronize where CUDA is present (for median_ms's sync)."""
    import torch

    return torch.cuda.synchronize if torch.cuda.is_available() else None


def add_torch_compile_option(parser, what: str) -> None:
    """--torch-compile [MODE]: also run the fused bf16 fast torch path through torch.compile."""
    parser.add_argument(
        "--torch-compile",
        nargs="?",
        const="default",
        default=None,
        metavar="MODE",
        help=f"{what} with torch.compile (bf16 adapters, fused); MODE: a torch.compile mode, "
        "e.g. max-autotune-no-cudagraphs ('default' when left out)",
    )


def write_report(out: Path, stem: str, report: dict, markdown: str) -> None:
    """OUT/STEM.json and OUT/STEM.md, by the project's report policy; the markdown printed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_file(out / f"{stem}.json", json.dumps(report, indent=2, default=str) + "\n")
    write_file(out / f"{stem}.md", markdown)
    print(markdown)


def write_file(path: Path, text: str) -> None:
    """One report file by reflex_core.files' policy (atomic over a file, through to a device,
    refused over a read-only file or a folder), or one line and exit 1."""
    try:
        files.write_report(path, text)
    except files.OutputError as err:
        sys.exit(f"error: {err}")
