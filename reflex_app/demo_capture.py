"""The demo's screen after one task, as plain text (the README's capture).

    python -m reflex_app.demo_capture --model DIR --task "compute 5 factorial" --out FILE [--width 160]

Loads the model on the MLX backend, runs the task on both sides exactly as
`reflex-mlx demo` does (reflex_app.ui), and renders the final screen with
rich's recording console.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from reflex_core import files


def main(argv=None) -> None:
    from rich.console import Console

    from reflex_app.ui import Demo, Screen
    from reflex_mlx.backend import BACKEND

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--task", default="compute 5 factorial and store it")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--passes", type=int, default=1)
    args = p.parse_args(argv)
    loaded = BACKEND.load(args.model)
    demo = Demo(loaded, Screen(model=(args.model or Path("reflex-tiny")).name), passes=args.passes)
    demo.run_task(args.task, None, lambda: None)
    # recorded, not shown: the text is printed once, below
    console = Console(record=True, width=args.width, height=args.height, file=io.StringIO())
    console.print(demo.screen.render())
    text = console.export_text()
    try:  # reflex_core.files' policy: atomic over a file, refused over a folder or a read-only file
        files.write_report(args.out, text)
    except files.OutputError as err:
        sys.exit(f"error: {err}")
    print(text)


if __name__ == "__main__":
    main()
