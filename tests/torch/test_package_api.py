"""`from reflex_torch import load, run`: the Python API with the model on torch, on the
bundled reflex-tiny."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_the_torch_package_computes_5_factorial():
    import reflex_torch
    from reflex_torch import load, run

    model = load("tiny")
    result = run(model, "compute 5 factorial", max_cycles=200)
    assert result.halted and result.memory()["0x5000"][0] == 120
    assert model.device.startswith("torch") and model.source == str(reflex_torch.BUNDLED_MODEL)
    from reflex_torch import load as again  # after loading imported reflex_torch.loader

    assert again is load is reflex_torch.load and again.__module__ == "reflex_torch"
