"""The one atomic write: a file is either its old self or complete, never half-written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, data: str | bytes | Callable[[Path], None]) -> Path:
    """Write beside the target, then rename over it.

    `data` is text, bytes, or a function that writes the given temporary path
    (torch.save, save_pretrained). On any failure the temporary file is removed
    and the target is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder: the first error is the one to report
            pass
        raise
    return path


def writable_file(path: str | Path) -> str | None:
    """Why `path` cannot be written as a file (None when it can): checked before long work."""
    import os

    text = str(path)
    if not text.strip():
        return "the output path is empty"
    path = Path(path).expanduser()
    if path.is_dir():
        return f"{path} is a directory"
    parent = path.parent
    if not parent.is_dir():
        return f"no directory {parent} to write {path.name} into"
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{path} is not writable"
    return None
