"""The torch backend opens a model folder through the same file checks as MLX's:
a FIFO or a device where a config or a backbone file should be is refused at once."""

from __future__ import annotations

import os
import time

import pytest

from reflex_core.backends import BackendError
from reflex_torch.backend import _sources
from reflex_torch.load import BUNDLED_MODEL as TINY_TORCH


def _refused(model) -> str:
    started = time.perf_counter()
    with pytest.raises(BackendError) as err:
        _sources(model)
    assert time.perf_counter() - started < 30, "it waited on the file"
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("where", ["backbone/config.json", "backbone/tokenizer.json"])
def test_a_fifo_in_a_torch_backbone_is_refused(tmp_path, where):
    model = tmp_path / "model"
    (model / "backbone").mkdir(parents=True)
    os.link(TINY_TORCH / "reflex.pt", model / "reflex.pt")
    for entry in (TINY_TORCH / "backbone").iterdir():
        os.link(entry, model / "backbone" / entry.name)
    (model / where).unlink()
    os.mkfifo(model / where)
    assert "FIFO" in _refused(model)


def test_a_converted_folder_whose_config_is_a_fifo_or_a_device_is_refused(tmp_path):
    os.mkfifo(tmp_path / "config.json")
    assert "FIFO" in _refused(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").symlink_to("/dev/zero")
    assert "character device" in _refused(tmp_path)


def test_a_checkpoint_that_is_a_fifo_or_a_device_is_never_opened(tmp_path):
    """A converted folder names its source checkpoint; that path must still be a regular file."""
    from reflex_core.hub import resolve_checkpoint

    os.mkfifo(tmp_path / "reflex.pt.fifo")
    for path in (tmp_path / "reflex.pt.fifo", "/dev/zero"):
        started = time.perf_counter()
        with pytest.raises(FileNotFoundError, match="not a regular file"):
            resolve_checkpoint(str(path))
        assert time.perf_counter() - started < 30


def test_a_backbone_folder_holding_a_fifo_is_refused_before_it_is_loaded(tmp_path):
    """The converter and the torch loader resolve a local backbone through hub.resolve_backbone."""
    from reflex_core.folder import FolderError
    from reflex_core.hub import resolve_backbone

    backbone = tmp_path / "backbone"
    backbone.mkdir()
    for entry in (TINY_TORCH / "backbone").iterdir():
        os.link(entry, backbone / entry.name)
    assert resolve_backbone(str(backbone)) == str(backbone)
    assert resolve_backbone("backbone", near=tmp_path / "reflex.pt") == str(backbone)
    (backbone / "model.safetensors").unlink()
    os.mkfifo(backbone / "model.safetensors")
    started = time.perf_counter()
    with pytest.raises(FolderError, match="FIFO"):
        resolve_backbone(str(backbone))
    assert time.perf_counter() - started < 30
