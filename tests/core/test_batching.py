"""The packing index math both backends use (reflex_core.batching), on plain lists."""

from __future__ import annotations

import numpy as np
import pytest

from reflex_core.batching import PackedLayout, pad_batch, padded


def test_grid_and_packed_are_inverse_on_real_tokens():
    layout = PackedLayout((3, 1, 4))
    assert (layout.batch, layout.width, layout.tokens, layout.uniform) == (3, 4, 8, False)
    assert layout.starts == [0, 3, 4]
    assert layout.last == [2, 3, 7]
    assert layout.positions == [0, 1, 2, 0, 0, 1, 2, 3]
    packed_rows = np.arange(layout.tokens) * 10
    grid = packed_rows[layout.grid].reshape(layout.batch, layout.width)
    # each prompt's real tokens in order, then its last token repeated as padding
    assert grid.tolist() == [[0, 10, 20, 20], [30, 30, 30, 30], [40, 50, 60, 70]]
    assert grid.reshape(-1)[layout.packed].tolist() == packed_rows.tolist()
    assert layout.key_valid == [[True, True, True, False], [True, False, False, False], [True] * 4]


def test_select_and_repeat():
    layout = PackedLayout((3, 1, 4))
    assert layout.rows_of([2, 0]) == [4, 5, 6, 7, 0, 1, 2]
    assert layout.select([2, 0]).lengths == (4, 3)
    one = PackedLayout((5,))
    assert one.uniform and one.repeat(3).lengths == (5, 5, 5) and one.repeat(3).uniform
    with pytest.raises(ValueError):
        layout.repeat(2)
    with pytest.raises(ValueError):
        PackedLayout(())
    with pytest.raises(ValueError):
        PackedLayout((2, 0))


def test_padding_as_released():
    assert padded([5, 6], 4, 0) == ([5, 6, 0, 0], [1, 1, 0, 0])
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_id=9)
    assert ids == [[1, 2, 3], [4, 9, 9]] and mask == [[1, 1, 1], [1, 0, 0]]
    assert pad_batch([[1]], 0, length=3) == ([[1, 0, 0]], [[1, 0, 0]])
    with pytest.raises(ValueError):
        padded([1, 2, 3], 2, 0)
