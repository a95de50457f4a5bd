"""Connected components of an undirected graph given as edge arrays, labelled by smallest node.

Vectorized union–find: node ids are mapped to dense indices (sorted, so a smaller index is a
smaller id); every round hooks the larger of each edge's two roots under the smaller one
(`np.minimum.at`), then compresses paths by pointer jumping until every node points at a root.
A root only ever moves to a smaller index, so it ends at the component's smallest node, and the
result does not depend on edge order. Memory: a few arrays of len(nodes) and len(edges) int64.
"""

from __future__ import annotations

import numpy as np


def connected_components(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, label): every node that appears in an edge, ascending, and the smallest node of its
    component. `src[i]`–`dst[i]` is an edge; ids are any integers (e.g. dataset positions)."""
    src, dst = np.asarray(src), np.asarray(dst)
    if src.shape != dst.shape:
        raise ValueError("src and dst must have the same length")
    nodes, dense = np.unique(np.concatenate([src, dst]), return_inverse=True)
    u, v = dense[: src.size], dense[src.size :]
    parent = np.arange(nodes.size)
    while True:
        root_u, root_v = parent[u], parent[v]
        if np.array_equal(root_u, root_v):
            return nodes, nodes[parent]
        low = np.minimum(root_u, root_v)
        np.minimum.at(parent, root_u, low)
        np.minimum.at(parent, root_v, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
