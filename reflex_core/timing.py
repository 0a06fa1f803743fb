"""The timing helpers: the median wall time of a call that returns host values, and one long run."""

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
