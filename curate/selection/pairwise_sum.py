"""numpy's sum of a float64 array held in consecutive pieces, to the last bit, without joining the pieces.

`np.sum` adds n float64 values pairwise: a run of at most BLOCK (128) values with eight running
sums, a longer run split after ⌊n/2⌋ rounded down to a multiple of 8 and its halves' sums added.
The tree depends only on the run's length, so a node that lies inside one piece is that piece's
own `np.sum` of the slice. `piece_sums` gives, for one piece, the sums of the largest nodes inside
it and the values of the blocks it shares with a neighbour (at most BLOCK − 1 at each end);
`total` adds them up the tree — the value `np.sum` of the whole array gives.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

BLOCK = 128
"""numpy's PW_BLOCKSIZE: runs this short are summed with eight accumulators, not split."""


def _half(length: int) -> int:
    half = length // 2
    return half - half % 8


def piece_sums(values: np.ndarray, start: int, n: int) -> dict:
    """For `values` = elements start … start + len − 1 of an n-element array: {"nodes": {(first,
    length): sum} of the tree's largest nodes inside the piece, "shared": {(first, length): (start
    of the part here, the values)} of the blocks that also hold other pieces' elements}."""
    end = start + len(values)
    nodes: dict[tuple[int, int], float] = {}
    shared: dict[tuple[int, int], tuple[int, np.ndarray]] = {}

    def visit(low: int, length: int) -> None:
        high = low + length
        if high <= start or low >= end:
            return
        if start <= low and high <= end:
            nodes[(low, length)] = float(values[low - start:high - start].sum())
        elif length <= BLOCK:
            first = max(low, start)
            shared[(low, length)] = (first, np.array(values[first - start:min(high, end) - start]))
        else:
            half = _half(length)
            visit(low, half)
            visit(low + half, length - half)

    if len(values):
        visit(0, n)
    return {"nodes": nodes, "shared": shared}


def total(n: int, pieces: list[dict]) -> float:
    """`np.sum` of the n-element array whose consecutive pieces gave `pieces` (`piece_sums`)."""
    nodes: dict[tuple[int, int], float] = {}
    shared: dict[tuple[int, int], list] = defaultdict(list)
    for piece in pieces:
        nodes.update(piece["nodes"])
        for key, part in piece["shared"].items():
            shared[key].append(part)

    def value(low: int, length: int) -> float:
        if (low, length) in nodes:
            return nodes[(low, length)]
        if length <= BLOCK:
            parts = sorted(shared[(low, length)], key=lambda part: part[0])
            block = np.concatenate([part[1] for part in parts])
            if len(block) != length:
                raise AssertionError(f"pairwise sum: block ({low}, {length}) has {len(block)} values")
            return float(block.sum())
        half = _half(length)
        return value(low, half) + value(low + half, length - half)

    return value(0, n) if n else 0.0
