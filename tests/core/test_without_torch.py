"""reflex_core and its tests need no torch: run them with torch blocked.

The `slow` ones are left out of this second pass: they replay the corpus through the
same modules the quick ones import, so blocking torch under them proves nothing more."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_core_tests_pass_with_torch_blocked():
    others = [str(p) for p in sorted(HERE.glob("test_*.py")) if p.name != Path(__file__).name]
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import pytest\n"
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-m', 'not slow', *{others!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE.parents[1])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
