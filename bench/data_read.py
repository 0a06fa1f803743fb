"""How long a training run takes to read its data on --max-programs: the programs chosen
before any replay (reflex_core.training.read_split) against every program replayed
first and the choice made after (read_data, then split_programs).

    python -m bench.data_read [--data PATH] [--max-programs 40] [--repeat 3]

Both ways give the same split (checked here); the last line is the ratio of their
best times, measured in this one run.
"""

from __future__ import annotations

import argparse
import sys

from reflex_core import training
from reflex_core.corpus import find_corpus
from reflex_core.timing import seconds


def measure(data, max_programs: int, repeat: int = 3) -> dict:
    """Best wall seconds of both ways over `repeat` runs, and their ratio."""
    quiet = lambda *a: None
    options = dict(heldout_fraction=0.05, seed=0, eval_filter="punctuation", max_programs=max_programs)

    def replay_all_first():
        return training.split_programs(training.read_data(data, say=quiet), **options)

    def choose_first():
        return training.read_split([data], **options, say=quiet)

    best = {}
    splits = {}
    for name, way in (
        ("replay every program, then choose", replay_all_first),
        ("choose, then replay", choose_first),
    ):
        runs = [seconds(way) for _ in range(repeat)]
        splits[name] = runs[0][0]
        best[name] = min(t for _, t in runs)
    a, b = splits.values()
    if [g["program"].words for g in a.train] != [
        g["program"].words for g in b.train
    ] or a.heldout != b.heldout:
        raise RuntimeError("the two ways chose different programs")
    slow, fast = best.values()
    return {
        "seconds": best,
        "programs": a.counts["programs"],
        "used": a.counts["used_programs"],
        "ratio": slow / fast,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a corpus folder or JSONL (default: the corpus found)")
    parser.add_argument("--max-programs", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    data = args.data or find_corpus()
    if data is None:
        sys.exit("error: no training corpus found: pass --data PATH or set REFLEX_CORPUS")
    result = measure(data, args.max_programs, args.repeat)
    used = f"{result['used']} used (--max-programs {args.max_programs})"
    print(f"data {data}: {result['programs']} programs, {used}")
    for name, time_s in result["seconds"].items():
        print(f"{name:>36}: {time_s:.2f} s (best of {args.repeat})")
    print(f"replay-all/choose-first time ratio: {result['ratio']:.1f}")


if __name__ == "__main__":
    main()
