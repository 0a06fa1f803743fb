"""Build the test suite's cblas_sgemm forward (openblas_sgemm.c) and check it, or say why not.

    python tests/fastblas/build.py OUT.so

Exits 0 either way: without a C compiler or numpy's OpenBLAS the tests run on MLX's own
BLAS, only slower. A library that builds but multiplies wrongly is deleted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy

HERE = Path(__file__).resolve().parent
# MLX float32 matmuls of every transpose pairing, against numpy in float64
CHECK = """
import mlx.core as mx, numpy as np
rng = np.random.default_rng(0)
for ta in (False, True):
    for tb in (False, True):
        a = rng.standard_normal((37, 70) if not ta else (70, 37)).astype(np.float32)
        b = rng.standard_normal((70, 53) if not tb else (53, 70)).astype(np.float32)
        x, y = mx.array(a), mx.array(b)
        got = np.array((x.T if ta else x) @ (y.T if tb else y))
        want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
        assert np.allclose(got, want, atol=1e-3), (ta, tb)
print("ok")
"""


def openblas() -> Path | None:
    libs = Path(numpy.__file__).resolve().parent.parent / "numpy.libs"
    found = sorted(libs.glob("libscipy_openblas64_*.so*"))
    return found[0] if found else None


def main(out: Path) -> int:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    library = openblas()
    if compiler is None or library is None:
        why = "no C compiler" if compiler is None else "numpy ships no OpenBLAS here"
        print(f"fastblas: not built ({why}); MLX's CPU tests use its own, slower BLAS")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    build = [compiler, "-O2", "-shared", "-fPIC", "-o", str(out), str(HERE / "openblas_sgemm.c")]
    build += [f"-L{library.parent}", f"-l:{library.name}", f"-Wl,-rpath,{library.parent}"]
    built = subprocess.run(build, capture_output=True, text=True)
    env = {**os.environ, "LD_PRELOAD": str(out), "OPENBLAS_NUM_THREADS": "1"}
    checked = built.returncode == 0 and subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600
    )
    if not checked or checked.returncode != 0:
        out.unlink(missing_ok=True)
        print("fastblas: not built (it did not compile or multiplied wrongly); MLX uses its own BLAS")
        return 0
    print(f"fastblas: {out} forwards MLX's float32 matmul to {library.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
