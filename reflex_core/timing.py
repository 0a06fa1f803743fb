"""The timing and memory helpers: the median wall time of a call that returns host
values, one long run, the peak resident set."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def median_ms(
    call: Callable, inputs: Sequence, warmup: int = 1, sync: Callable[[], None] | None = None
) -> float:
    """Median milliseconds of call(x) over `inputs`, after `warmup` untimed calls.

    `call` must return host values (decoded words), so its work has finished
    when it returns; `sync` (e.g. torch.cuda.synchronize) drains earlier work
    before each start.
    """
    for x in inputs[:warmup]:
        call(x)
    times = []
    for x in inputs:
        if sync is not None:
            sync()
        start = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def seconds(call: Callable[[], Any]) -> tuple[Any, float]:
    """(call(), its wall time in seconds): for runs too long to repeat."""
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def peak_rss() -> int:
    """This process's peak resident set, in bytes (Linux reports kB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def human_bytes(count: float) -> str:
    """Bytes for a person: 812.0 KiB, 148.1 MiB, 8.70 GiB."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.2f} {unit}" if unit == "GiB" else f"{count / size:.1f} {unit}"
    return f"{int(count)} B"
