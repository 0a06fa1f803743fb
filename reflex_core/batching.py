"""How prompts of different lengths share one batch: the index math, for both backends.

The fast paths pack a batch's prompts token after token (N real tokens, no
padding): projections, MLPs and adapters run on those N rows. Only attention
must not mix prompts, so it sees them on a [B, T] grid (T, the longest
prompt), causal, where a prompt's right pads come after its real tokens and so
never reach them. `PackedLayout` holds the indices that move rows between the
two and the positions each token has; each backend turns them into arrays.

Packing was measured against right padding on the 41-task batch: see
docs/performance.md (both backends use this one scheme).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class PackedLayout:
    """B prompts of the given lengths, packed prompt after prompt."""

    lengths: tuple[int, ...]

    def __post_init__(self):
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError("a batch needs at least one prompt, each at least one token long")

    @classmethod
    def of(cls, token_lists: Sequence[Sequence[int]]) -> PackedLayout:
        return cls(tuple(len(tokens) for tokens in token_lists))

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """T: the grid's row length, the longest prompt."""
        return max(self.lengths)

    @property
    def tokens(self) -> int:
        """N: the packed rows."""
        return sum(self.lengths)

    @property
    def uniform(self) -> bool:
        """All prompts the same length: then the grid is the packing, no gathers needed."""
        return len(set(self.lengths)) == 1

    @cached_property
    def starts(self) -> list[int]:
        """Each prompt's first packed row."""
        out, total = [], 0
        for n in self.lengths:
            out.append(total)
            total += n
        return out

    @cached_property
    def positions(self) -> list[int]:
        """[N] each packed token's position in its own prompt (for the rotary tables)."""
        return [t for n in self.lengths for t in range(n)]

    @cached_property
    def grid(self) -> list[int]:
        """[B*T] the packed row each grid cell reads; a pad repeats its prompt's last token."""
        T = self.width
        return [s + min(t, n - 1) for s, n in zip(self.starts, self.lengths) for t in range(T)]

    @cached_property
    def packed(self) -> list[int]:
        """[N] the grid cell each packed row comes from (the inverse of `grid` on real tokens)."""
        T = self.width
        return [b * T + t for b, n in enumerate(self.lengths) for t in range(n)]

    @cached_property
    def last(self) -> list[int]:
        """[B] each prompt's last token, as a packed row: the token that is pooled."""
        return [s + n - 1 for s, n in zip(self.starts, self.lengths)]

    @cached_property
    def key_valid(self) -> list[list[bool]]:
        """[B, T] the grid cells that are real tokens: the keys a pooled query may read."""
        return [[t < n for t in range(self.width)] for n in self.lengths]

    def rows_of(self, indices: Sequence[int]) -> list[int]:
        """The packed rows of the prompts at `indices`, in that order."""
        return [self.starts[i] + t for i in indices for t in range(self.lengths[i])]

    def select(self, indices: Sequence[int]) -> PackedLayout:
        """The layout of the prompts at `indices` alone (take `rows_of(indices)` with it)."""
        return PackedLayout(tuple(self.lengths[i] for i in indices))

    def repeat(self, count: int) -> PackedLayout:
        """A one-prompt layout as `count` copies (one per state)."""
        if self.batch != 1:
            raise ValueError("only a one-prompt batch repeats")
        return PackedLayout(self.lengths * count)


def padded(ids: Sequence[int], length: int, pad_id: int) -> tuple[list[int], list[int]]:
    """Right-pad to `length` as the released reference does: (ids, attention mask)."""
    n = len(ids)
    if n > length:
        raise ValueError(f"a prompt of {n} tokens does not fit {length}")
    return list(ids) + [pad_id] * (length - n), [1] * n + [0] * (length - n)


def pad_batch(token_lists: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
    """Right-pad several prompts to `length` (default: the longest): (ids rows, mask rows)."""
    length = length or max(len(t) for t in token_lists)
    rows = [padded(t, length, pad_id) for t in token_lists]
    return [r[0] for r in rows], [r[1] for r in rows]
