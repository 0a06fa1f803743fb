"""The torch backend opens a model folder through the same file checks as MLX's:
a FIFO or a device where a config or a backbone file should be is refused at once."""

from __future__ import annotations

import os

import pytest

from reflex_core.backends import BackendError
from reflex_torch.backend import _sources
from reflex_torch.loader import BUNDLED_MODEL as TINY_TORCH


def _refused(model, no_hang) -> str:
    with pytest.raises(BackendError) as err:
        no_hang(_sources, model)  # waiting on the file fails as hung
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("where", ["backbone/config.json", "backbone/tokenizer.json"])
def test_a_fifo_in_a_torch_backbone_is_refused(tmp_path, where, no_hang):
    model = tmp_path / "model"
    (model / "backbone").mkdir(parents=True)
    os.link(TINY_TORCH / "reflex.pt", model / "reflex.pt")
    for entry in (TINY_TORCH / "backbone").iterdir():
        os.link(entry, model / "backbone" / entry.name)
    (model / where).unlink()
    os.mkfifo(model / where)
    assert "FIFO" in _refused(model, no_hang)


def test_a_converted_folder_whose_config_is_a_fifo_or_a_device_is_refused(tmp_path, no_hang):
    os.mkfifo(tmp_path / "config.json")
    assert "FIFO" in _refused(tmp_path, no_hang)
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").symlink_to("/dev/zero")
    assert "character device" in _refused(tmp_path, no_hang)


def test_a_checkpoint_that_is_a_fifo_or_a_device_is_never_opened(tmp_path, no_hang):
    """A converted folder names its source checkpoint; that path must still be a regular file."""
    from reflex_core.hub import resolve_checkpoint

    os.mkfifo(tmp_path / "reflex.pt.fifo")
    for path in (tmp_path / "reflex.pt.fifo", "/dev/zero"):
        with pytest.raises(FileNotFoundError, match="not a regular file"):
            no_hang(resolve_checkpoint, str(path))


def test_a_backbone_folder_holding_a_fifo_is_refused_before_it_is_loaded(tmp_path, no_hang):
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
    with pytest.raises(FolderError, match="FIFO"):
        no_hang(resolve_backbone, str(backbone))
