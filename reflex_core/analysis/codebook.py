"""The codebook's statistics on plain numpy arrays: nearest neighbours by cosine, singular
values and effective rank, a 2-D map, field algebra, and the confusions of held-out
cycles. Rows are the codebook's embeddings [N, E]; words the 32-bit word of each row."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .. import rv32i
from ..loop import disassemble

FIELDS = ("rd", "rs1", "imm")  # the fields field algebra moves
NEIGHBOURS = 5  # neighbours listed per row
ALGEBRA_LIMIT = 20_000  # analogies tested at most (a fixed sample beyond)
ALGEBRA_SEED = 0


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def cosine(rows: np.ndarray) -> np.ndarray:
    """[N, N] cosine similarity of every row with every row."""
    u = unit(rows)
    return u @ u.T


def nearest(rows: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """(indices [N, k], cosines [N, k]) of each row's k nearest other rows, nearest first
    (ties broken by the lower row index)."""
    sim = cosine(rows)
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, axis=1)


def decoded(words: Sequence[int]) -> list[dict]:
    return [rv32i.decode(int(w)) for w in words]


def neighbour_stats(rows: np.ndarray, words: Sequence[int]) -> dict:
    """How many rows' nearest neighbour shares their opcode, their format, their rd (among
    rows that have an rd, both of them), and all three."""
    first = nearest(rows, 1)[0][:, 0]
    ops = decoded(words)
    same = lambda key: [ops[i].get(key) == ops[j].get(key) for i, j in enumerate(first)]
    with_rd = [i for i, j in enumerate(first) if "rd" in ops[i] and "rd" in ops[j]]
    op, fmt = same("op"), same("format")
    rd = [ops[i]["rd"] == ops[first[i]]["rd"] for i in with_rd]
    allthree = [op[i] and fmt[i] and ops[i]["rd"] == ops[first[i]]["rd"] for i in with_rd]
    n = len(words)
    return {
        "chance_same_op": chance([o["op"] for o in ops]),
        "chance_same_format": chance([o["format"] for o in ops]),
        "chance_same_rd": chance([o["rd"] for o in ops if "rd" in o]),
        "rows": n,
        "same_op": int(sum(op)),
        "same_format": int(sum(fmt)),
        "rows_with_rd": len(with_rd),
        "same_rd": int(sum(rd)),
        "same_op_format_rd": int(sum(allthree)),
        "share_same_op": sum(op) / n if n else None,
        "share_same_format": sum(fmt) / n if n else None,
        "share_same_rd": sum(rd) / len(with_rd) if with_rd else None,
    }


def chance(values: Sequence) -> float | None:
    """The share of a row's matches if its neighbour were another row drawn at random:
    sum over values of c (c - 1) / (n (n - 1))."""
    n = len(values)
    if n < 2:
        return None
    return sum(c * (c - 1) for c in Counter(values).values()) / (n * (n - 1))


def neighbour_table(rows: np.ndarray, words: Sequence[int], k: int = NEIGHBOURS) -> list[dict]:
    """Every row with its k nearest rows (assembly text and cosine)."""
    index, sims = nearest(rows, k)
    return [
        {
            "row": i,
            "word": f"{int(words[i]):08x}",
            "asm": disassemble(int(words[i])),
            "neighbours": [
                {"row": int(j), "asm": disassemble(int(words[j])), "cosine": round(float(s), 4)}
                for j, s in zip(index[i], sims[i])
            ],
        }
        for i in range(len(words))
    ]


def singular_values(rows: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(rows, dtype=np.float64), compute_uv=False)


def effective_rank(values: np.ndarray) -> float:
    """exp of the entropy of the normalised singular values (Roy and Vetterli, 2007): n for
    n equal values, 1 for one non-zero value."""
    values = np.asarray(values, dtype=np.float64)
    p = values[values > 0] / values.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def geometry(rows: np.ndarray) -> dict:
    values = singular_values(rows)
    energy = np.cumsum(values**2) / (values**2).sum()
    return {
        "shape": list(np.shape(rows)),
        "singular_values": [round(float(v), 6) for v in values],
        "effective_rank": effective_rank(values),
        "rank_90_energy": int(np.searchsorted(energy, 0.90) + 1),
        "rank_99_energy": int(np.searchsorted(energy, 0.99) + 1),
    }


def pca_2d(rows: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The unit rows projected on their first two principal axes, and the share of
    variance each axis explains."""
    u = unit(rows)
    centred = u - u.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2 / (s**2).sum()
    return centred @ vt[:2].T, [float(var[0]), float(var[1])]


# ------------------------------------------------------------------ field algebra
def _key_without(op: dict, field: str) -> tuple | None:
    """The instruction's identity with `field` left out (None if it has no such field)."""
    if field not in op:
        return None
    return tuple(sorted((k, v) for k, v in op.items() if k != field))


def field_pairs(words: Sequence[int], field: str) -> list[tuple[int, int]]:
    """Ordered pairs of rows (i, j) whose instructions differ only in `field`."""
    groups: dict[tuple, list[int]] = {}
    for i, op in enumerate(decoded(words)):
        key = _key_without(op, field)
        if key is not None and op["op"] != "illegal":
            groups.setdefault(key, []).append(i)
    return [(i, j) for rows in groups.values() for i, j in itertools.permutations(rows, 2)]


def field_algebra(
    rows: np.ndarray, words: Sequence[int], limit: int = ALGEBRA_LIMIT, seed: int = ALGEBRA_SEED
) -> dict:
    """The analogy test over fields: for rows w, w' that differ only in field F (a -> b),
    and another pair u, u' that differ only in F with the same a -> b, does
    unit(w) - unit(u) + unit(u') rank w' first among all rows but w, u, u'?
    Share of hits per field and per opcode of w; at most `limit` analogies (a fixed sample)."""
    ops = decoded(words)
    u = unit(rows)
    per_field: dict[str, dict] = {}
    per_op: dict[str, list[int]] = {}
    examples = []
    for field in FIELDS:
        pairs = field_pairs(words, field)
        by_change: dict[tuple, list[tuple[int, int]]] = {}
        for i, j in pairs:
            by_change.setdefault((ops[i][field], ops[j][field]), []).append((i, j))
        quads = [
            (w, w2, v, v2)
            for same in by_change.values()
            for (w, w2), (v, v2) in itertools.permutations(same, 2)
            if len({w, w2, v, v2}) == 4
        ]
        if len(quads) > limit:
            quads = random.Random(seed).sample(quads, limit)
        hits = 0
        for w, w2, v, v2 in quads:
            target = u[w] - u[v] + u[v2]
            scores = u @ target
            scores[[w, v, v2]] = -np.inf
            hit = int(np.argmax(scores)) == w2
            hits += hit
            counts = per_op.setdefault(ops[w]["op"], [0, 0])
            counts[0] += hit
            counts[1] += 1
            if len(examples) < 4 * (FIELDS.index(field) + 1):
                examples.append(
                    {
                        "field": field,
                        "word": disassemble(int(words[w])),
                        "minus": disassemble(int(words[v])),
                        "plus": disassemble(int(words[v2])),
                        "expected": disassemble(int(words[w2])),
                        "got": disassemble(int(words[int(np.argmax(scores))])),
                    }
                )
        per_field[field] = {
            "pairs": len(pairs),
            "analogies": len(quads),
            "hits": hits,
            "share": hits / len(quads) if quads else None,
        }
    return {
        "fields": per_field,
        "ops": {op: {"hits": h, "analogies": n, "share": h / n} for op, (h, n) in sorted(per_op.items())},
        "examples": examples,
    }


# ------------------------------------------------------------------ confusions
def op_class(word: int) -> str:
    return rv32i.decode(int(word))["op"]


def confusions(expected: Sequence[int], predicted: Sequence[int]) -> dict:
    """Per-step top-1 by the expected word's opcode, and the top-1 misses: (expected op,
    chosen op) counts, how many stay within their opcode, and the most frequent word pairs."""
    by_op: dict[str, list[int]] = {}
    misses: Counter = Counter()
    word_pairs: Counter = Counter()
    for want, got in zip(expected, predicted):
        cell = by_op.setdefault(op_class(want), [0, 0])
        cell[0] += want == got
        cell[1] += 1
        if want != got:
            misses[(op_class(want), op_class(got))] += 1
            word_pairs[(int(want), int(got))] += 1
    total_misses = sum(misses.values())
    within = sum(n for (a, b), n in misses.items() if a == b)
    return {
        "cycles": len(expected),
        "top1": sum(c[0] for c in by_op.values()),
        "top1_share": sum(c[0] for c in by_op.values()) / len(expected) if expected else None,
        "by_op": {op: {"top1": h, "cycles": n, "share": h / n} for op, (h, n) in sorted(by_op.items())},
        "misses": total_misses,
        "misses_within_op": within,
        "miss_table": [{"expected_op": a, "chosen_op": b, "count": n} for (a, b), n in misses.most_common()],
        "miss_words": [
            {
                "expected": disassemble(a),
                "chosen": disassemble(b),
                "count": n,
                "expected_word": f"{a:08x}",
                "chosen_word": f"{b:08x}",
            }
            for (a, b), n in word_pairs.most_common()
        ],
    }
