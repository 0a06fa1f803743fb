"""Session fixtures: one small random Reflex checkpoint, converted both ways.

Built by the project itself (reflex_torch.fixture + convert), so the tests run
offline with real transformers, mlx-lm and safetensors files.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    import torch  # noqa: F401  (the gpu marker only makes sense with torch present)

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (no GPU here)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory):
    from reflex_torch.fixture import build_fixture

    return build_fixture(tmp_path_factory.mktemp("fixture"))


def _convert(fixture_dir, out, **kw):
    from convert.convert import convert_checkpoint

    return convert_checkpoint(
        str(fixture_dir / "reflex.pt"), str(fixture_dir / "backbone"), out, quiet=True, **kw
    )


@pytest.fixture(scope="session")
def mlx_float32_dir(fixture_dir, tmp_path_factory):
    """The fixture converted with an unquantized float32 backbone and float32 adapters."""
    return _convert(fixture_dir, tmp_path_factory.mktemp("mlx") / "f32", quantize=False,
                    dtype="float32", backbone_dtype="float32")


@pytest.fixture(scope="session")
def mlx_4bit_dir(fixture_dir, tmp_path_factory):
    """The fixture converted as shipped for the release: 4-bit backbone, group size 64."""
    return _convert(fixture_dir, tmp_path_factory.mktemp("mlx") / "q4", bits=4)


@pytest.fixture(scope="session")
def torch_fixture(fixture_dir):
    from reflex_torch.load import load_reflex

    return load_reflex(fixture_dir / "reflex.pt", backbone=str(fixture_dir / "backbone"),
                       device="cpu")


@pytest.fixture(scope="session")
def mlx_float32(mlx_float32_dir):
    from reflex_mlx.load import load_model

    return load_model(mlx_float32_dir)
