"""What `reflex-mlx run` holds: memory after loading a converted model and running it,
against the weights the folder stores, and what the text side adds.

    python -m bench.run_memory MODEL_DIR [--cycles 1] [--text-tokens 4] [--out DIR]

In this process: the model is loaded as `reflex-mlx run` loads it (the MLX
backend: fast path compiled, the text writer ready), one prompt runs for
--cycles cycles (0: none; a quantized model is very slow on a Linux CPU), the
demo's text side reads what it needs (its whole mlx-lm model), then writes
--text-tokens tokens (0: none). After each step: MLX's active memory (arrays
alive), its peak, and the process's resident set (VmRSS; Python, MLX and the tokenizer included). The folder's
weights are counted from the safetensors headers, the untied text head
(`lm_head.*`) apart.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PROMPT = "compute 5 factorial"


def rss() -> int:
    """This process's resident set now, in bytes (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stored_bytes(model_dir: Path) -> tuple[int, int]:
    """(bytes of every weight the folder stores, of those the untied lm_head's), from headers."""
    import mlx.core as mx

    total = head = 0
    for path in sorted(Path(model_dir).rglob("*.safetensors")):
        for name, array in mx.load(str(path)).items():  # lazy: headers only
            total += array.nbytes
            if name.startswith("lm_head."):
                head += array.nbytes
    return total, head


def measure(model_dir: Path, cycles: int, text_tokens: int) -> dict:
    import mlx.core as mx

    from reflex_core.loop import ProgramRun
    from reflex_core.predict import Predictor
    from reflex_core.textmode import text_messages
    from reflex_mlx.backend import MLXBackend

    weights, head = stored_bytes(model_dir)
    row = {"model": str(model_dir), "stored_weight_bytes": weights, "stored_head_bytes": head}
    base_active, base_rss = mx.get_active_memory(), rss()
    row["process_rss_before_bytes"] = base_rss

    def snapshot(stage: str) -> None:
        row[stage] = {
            "mlx_active_bytes": mx.get_active_memory() - base_active,
            "mlx_peak_bytes": mx.get_peak_memory(),
            "process_rss_bytes": rss(),
        }

    started = time.time()
    loaded = MLXBackend().load(model_dir)
    row["load_s"] = round(time.time() - started, 1)
    snapshot("after_load")
    if cycles:
        predictor = Predictor(loaded.runner, loaded.tokenizer, PROMPT, loaded.config)
        program = ProgramRun(cycles)
        started = time.time()
        while not program.finished:
            program.feed(predictor(program.state()))
        row["run_s"] = round(time.time() - started, 1)
        row["cycles"] = len(program.cycles)
        snapshot("after_run")
    if loaded.text_writer is not None:
        mx.eval(loaded.text_writer.language_model.parameters())  # what writing text reads first
        snapshot("after_text_head")
        if text_tokens:
            loaded.text_writer.max_tokens = text_tokens
            started = time.time()
            row["text"] = "".join(loaded.text_writer(text_messages(PROMPT)))
            row["text_s"] = round(time.time() - started, 1)
            snapshot("after_text")
    row["device"] = str(mx.default_device())
    return row


def markdown(row: dict) -> str:
    gib = lambda n: f"{n / 2**30:.3f}"
    lines = [
        f"`{row['model']}`: stored weights {gib(row['stored_weight_bytes'])} GiB, of which the "
        f"untied text head {gib(row['stored_head_bytes'])} GiB; {row['device']}; process before "
        f"loading {gib(row['process_rss_before_bytes'])} GiB",
        "",
        "| after | MLX active GiB | MLX peak GiB | process RSS GiB |",
        "|---|---|---|---|",
    ]
    for stage in ("after_load", "after_run", "after_text_head", "after_text"):
        if stage in row:
            s = row[stage]
            lines.append(
                f"| {stage.replace('_', ' ')} | {gib(s['mlx_active_bytes'])} | {gib(s['mlx_peak_bytes'])} "
                f"| {gib(s['process_rss_bytes'])} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--cycles", type=int, default=1)
    parser.add_argument("--text-tokens", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    row = measure(args.model, args.cycles, args.text_tokens)
    print(json.dumps(row, indent=1))
    if args.out:
        from .common import write_report

        write_report(args.out, "run_memory", row, markdown(row))
    else:
        print(markdown(row))


if __name__ == "__main__":
    main()
