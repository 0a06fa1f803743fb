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
        tmp.unlink(missing_ok=True)
        raise
    return path
