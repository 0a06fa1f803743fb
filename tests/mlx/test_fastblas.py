"""The test suite's cblas_sgemm forward (tests/fastblas), where `make test` preloaded it.

Every MLX float32 matmul of the suite goes through it, so its results are held to
numpy's in float64 here, for the shapes and strides MLX hands to BLAS.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

LIBRARY = "libreflex_sgemm.so"
preloaded = LIBRARY in os.environ.get("LD_PRELOAD", "")


@pytest.mark.skipif(not preloaded, reason="tests/fastblas is not preloaded (make test preloads it)")
def test_the_forward_is_mapped_and_multiplies_as_numpy_does():
    import mlx.core as mx

    assert LIBRARY in Path("/proc/self/maps").read_text()
    rng = np.random.default_rng(1)
    for m, k, n in [(1, 1, 1), (68, 192, 512), (3, 1000, 7), (129, 65, 257)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        want = a.astype(np.float64) @ b.astype(np.float64)
        x, y = mx.array(a), mx.array(b)
        for got in (x @ y, x @ mx.array(b.T).T, mx.array(a.T).T @ y):
            np.testing.assert_allclose(np.array(got), want, rtol=1e-4, atol=1e-3)
    batch = rng.standard_normal((4, 17, 33)).astype(np.float32)
    weight = rng.standard_normal((33, 9)).astype(np.float32)
    got = np.array(mx.array(batch) @ mx.array(weight))
    np.testing.assert_allclose(got, batch.astype(np.float64) @ weight, rtol=1e-4, atol=1e-3)
