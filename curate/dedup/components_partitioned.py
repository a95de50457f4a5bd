"""Connected components of duplicate pairs in partitions by node id: no process holds every pair or label.

The MinHash combine (`MinHashDedup.decisions`) joins every duplicate pair in one process (union–find,
`components.py`). When the pairs do not fit there, `partitioned_decisions` computes the same
decision table with alternating Large-Star / Small-Star rounds (Kiveris et al., "Connected
Components in MapReduce and Beyond", SoCC 2014) over edge frames partitioned by a hash of the node
id, each round's partitions run as parallel tasks by a `TaskRunner` (the local process pool or Ray
tasks, `engine/partition_tasks.py`):

- Large-Star at node u (all its neighbours): every larger neighbour v is re-linked to the smallest
  of u and its neighbours; Small-Star at u (its smaller neighbours): u and each of them are
  re-linked to the smallest. Both keep the components and only ever link toward smaller ids; the
  edge count never grows. Rounds: O(log² n) proven, ~log n seen — a chain of 100,000 nodes takes
  ~20 (`tests/test_components_partitioned.py` bounds them).
- Convergence: a Large-Star whose input is a forest of stars (every node either has no smaller
  neighbour, or exactly one neighbour and it is smaller) — then each star's centre is its
  component's smallest node, the label union–find gives, and the edges are (member, centre).
- Then the stars are gathered at their centre's partition (cluster size, the `keep` rule's keeper,
  with keep keys read from the summaries for the cluster's members only), the decision rows are
  sent to partitions by `_pos` range (contiguous shard ranges), and each range is sorted:
  the ranges in order are the decision table, row for row equal to `MinHashDedup.decisions`.

Each task holds its partition of the edges (16 B per edge, both directions in Large-Star), so the
largest process holds about 2·edges/P rows — except a single component's star, which lands whole
in its centre's partition. Every step's output goes to files (local) or Ray's object store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from datamill.curate.engine.partition_tasks import DecisionParts, Handle, TaskRunner, regroup
from datamill.curate.engine.paths import local_copy
from datamill.curate.engine.stage import DROP_REASON, POSITION

KEY, NBR = "_key", "_nbr"
"""A directed record of an edge, held by the partition of `_key`."""
NODE = "_node"
"""A flag row: a node with an earlier partner in the original pairs (keep=first with verified pairs)."""
DROP = "_drop"
DEGREE = "_degree"
"""Star notes: a centre's neighbour count (claim), or 0 (a leaf's acknowledgement)."""
CLUSTER, CLUSTER_SIZE, REASON, KEEP_KEY = "dup_cluster", "dup_cluster_size", "near_duplicate", "_keep_key"

BYTES_PER_PAIR = 160
"""Peak memory of the one-process union–find and decision table per duplicate pair (bench_components.py: 142–159 B)."""

def pairs_fit(pairs: int, budget_mib: int) -> bool:
    """Whether `pairs` duplicate pairs fit the one-process union–find within `budget_mib` MiB."""
    return pairs * BYTES_PER_PAIR <= budget_mib * (1 << 20)


# --- partitioning ---------------------------------------------------------------------------

def node_partition(column: str, partitions: int) -> pl.Expr:
    """The partition of a node id: a hash of it in `partitions` equal ranges."""
    return ((pl.col(column).hash(seed=7) // (1 << 32)) * partitions // (1 << 32)).cast(pl.UInt32)


def range_cuts(low: int, high: int, partitions: int) -> list[int]:
    """The P-1 boundaries of P equally wide ranges of node ids in [low, high] (contiguous `_pos`
    ranges, so shards: the ranges in order give the decision table in `_pos` order)."""
    span = high - low + 1
    return [low + span * i // partitions for i in range(1, partitions)]


def range_partition(column: str, cuts: list[int]) -> pl.Expr:
    """The range of each node id among `cuts` (0 below the first cut)."""
    part = pl.lit(0, dtype=pl.UInt32)
    for cut in cuts:
        part = part + (pl.col(column) >= cut).cast(pl.UInt32)
    return part


def route(frame: pl.DataFrame, part: pl.Expr, partitions: int) -> list[pl.DataFrame]:
    """`frame`'s rows cut into one frame per partition by the partition expression."""
    if partitions == 1:
        return [frame]
    groups = frame.with_columns(part.alias("_part")).partition_by("_part", as_dict=True, include_key=False)
    empty = frame.clear()
    return [groups.get((p,), empty) for p in range(partitions)]


def both_ways(edges: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
    """Edges (`_key` > `_nbr`) as records at both ends, routed to their `_key`'s partition."""
    records = pl.concat([edges, edges.select(pl.col(NBR).alias(KEY), pl.col(KEY).alias(NBR))])
    return route(records, node_partition(KEY, partitions), partitions)


def _sorted_unique(keys: np.ndarray, nbrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (key, nbr) pairs, sorted by key then nbr (numpy: ~3× the pairs' bytes at peak,
    where polars' two-column `unique` takes ~15×)."""
    order = np.argsort(nbrs, kind="stable")  # two stable sorts: ~2× faster than np.lexsort
    order = order[np.argsort(keys[order], kind="stable")]
    keys, nbrs = keys[order], nbrs[order]
    keep = np.ones(keys.size, dtype=bool)
    keep[1:] = (keys[1:] != keys[:-1]) | (nbrs[1:] != nbrs[:-1])
    return keys[keep], nbrs[keep]


def _frame(keys: np.ndarray, nbrs: np.ndarray, dtype: pl.DataType) -> pl.DataFrame:
    return pl.DataFrame({KEY: pl.Series(keys, dtype=dtype), NBR: pl.Series(nbrs, dtype=dtype)})


def _records(frames: list[pl.DataFrame], dtype: pl.DataType) -> tuple[np.ndarray, np.ndarray]:
    """The distinct edge records (`_key`, `_nbr`) among the input frames, sorted by key then
    neighbour; a self-loop (x, x) is no edge but the note that x's star is finished."""
    frames = [f for f in frames if f is not None and f.columns == [KEY, NBR]]
    records = pl.concat(frames) if frames else pl.DataFrame(schema={KEY: dtype, NBR: dtype})
    return _sorted_unique(records[KEY].to_numpy(), records[NBR].to_numpy())


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) of each run of equal keys in sorted `keys`."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.zeros(0, dtype=np.int64)
    return starts, np.diff(np.r_[starts, keys.size])


def _with(frames: list[pl.DataFrame], column: str) -> pl.DataFrame | None:
    """The input frames of one kind (those with `column`), joined; None if there are none."""
    frames = [f for f in frames if f is not None and column in f.columns]
    return pl.concat(frames) if frames else None


# --- the steps (each: frames in, frames out per destination partition, a small info) -------

def start(frames: list[pl.DataFrame], partitions: int, dtype: pl.DataType) -> tuple[list, dict]:
    """Pairs (`src`, `dst`) → edges (larger, smaller) at both ends, for the first Large-Star."""
    pairs = pl.concat([f.select("src", "dst") for f in frames]) if frames else pl.DataFrame(
        schema={"src": dtype, "dst": dtype})
    pairs = pairs.select(pl.max_horizontal("src", "dst").cast(dtype).alias(KEY),
                         pl.min_horizontal("src", "dst").cast(dtype).alias(NBR))
    keys, nbrs = _sorted_unique(pairs.to_series(0).to_numpy(), pairs.to_series(1).to_numpy())
    edges = _frame(keys, nbrs, dtype).filter(pl.col(KEY) != pl.col(NBR))
    info = {"pairs": pairs.height, "low": edges[NBR].min(), "high": edges[KEY].max()}
    return both_ways(edges, partitions), info


def large_star(frames: list[pl.DataFrame], partitions: int, dtype: pl.DataType,
               cuts: list[int] | None) -> tuple[list, dict]:
    """Large-Star over the records of this partition's nodes, less those of finished stars (self-loop
    notes); edges routed for Small-Star, then the star notes: a claim (centre, centre, its
    neighbour count) from every node without a smaller neighbour and an acknowledgement (centre,
    leaf, 0) from every node whose only neighbour is smaller, each at the centre's partition. With
    `cuts` (the first round, whose records are the original pairs) also the flag rows of nodes that
    have a smaller partner, routed by `_pos` range."""
    k, n = _records(frames, dtype)
    loops = k == n
    if loops.any():
        live = ~np.isin(k, k[loops])
        k, n = k[live], n[live]
    starts, sizes = _groups(k)
    keys, first = k[starts], n[starts]  # first: the smallest neighbour
    smaller = np.add.reduceat((n < k).astype(np.int64), starts) if k.size else np.zeros(0, dtype=np.int64)
    larger = sizes - smaller
    violations = int(((smaller >= 1) & ((larger >= 1) | (smaller >= 2))).sum())
    up = n > k
    edges = _frame(*_sorted_unique(n[up], np.repeat(np.minimum(keys, first), sizes)[up]), dtype)
    centre, leaf = smaller == 0, (smaller == 1) & (larger == 0)
    notes = pl.DataFrame({
        KEY: pl.Series(np.r_[keys[centre], first[leaf]], dtype=dtype),
        NBR: pl.Series(np.r_[keys[centre], keys[leaf]], dtype=dtype),
        DEGREE: pl.Series(np.r_[larger[centre], np.zeros(int(leaf.sum()), dtype=np.int64)], dtype=pl.UInt32),
    })
    out = route(edges, node_partition(KEY, partitions), partitions)
    out += route(notes, node_partition(KEY, partitions), partitions)
    if cuts is not None:
        flags = pl.DataFrame({NODE: pl.Series(keys[smaller >= 1], dtype=dtype)})
        out += route(flags, range_partition(NODE, cuts), partitions)
    return out, {"violations": violations, "edges": edges.height}


def small_star(frames: list[pl.DataFrame], partitions: int, dtype: pl.DataType) -> tuple[list, dict]:
    """Small-Star over the records (node, smaller neighbour) of this partition; edges at both ends.
    A centre whose every neighbour acknowledged it as its only one is a finished star (its whole
    component, with the smallest node at the centre): its records (centre, leaf) are set aside for
    the end (in this partition's last output), and self-loop notes go to the partitions of its nodes,
    whose records the next round drops."""
    k, n = _records(frames, dtype)
    starts, sizes = _groups(k)
    keys, smallest = k[starts], n[starts]
    m = np.repeat(smallest, sizes)
    other = n != m
    edges = _frame(*_sorted_unique(np.r_[keys, n[other]], np.r_[smallest, m[other]]), dtype)
    notes = _with(frames, DEGREE)
    if notes is None:
        notes = pl.DataFrame(schema={KEY: dtype, NBR: dtype, DEGREE: pl.UInt32})
    acks = notes.filter(pl.col(KEY) != pl.col(NBR))
    claims = notes.filter(pl.col(KEY) == pl.col(NBR))
    finished = claims.join(acks.group_by(KEY).len("_acks"), on=KEY).filter(pl.col("_acks") == pl.col(DEGREE))
    stars = acks.join(finished.select(KEY), on=KEY, how="semi").select(KEY, NBR)
    done = pl.concat([finished.select(KEY), stars.select(pl.col(NBR).alias(KEY))]).select(KEY, pl.col(KEY).alias(NBR))
    out = both_ways(pl.concat([edges, done]), partitions)  # a note (x, x) goes to x's partition
    return [*out, stars], {"edges": edges.height, "finished": finished.height}


def to_centres(frames: list[pl.DataFrame], partitions: int, dtype: pl.DataType) -> tuple[list, dict]:
    """Star edges (member, centre) → records held by the centre's partition."""
    k, n = _records(frames, dtype)
    up = k > n
    stars = _frame(n[up], k[up], dtype)
    return route(stars, node_partition(KEY, partitions), partitions), {}


def clusters(frames: list[pl.DataFrame], partitions: int, dtype: pl.DataType, cuts: list[int],
             keep: str, summary_files: list[str]) -> tuple[list, dict]:
    """Each star's members with its centre (`dup_cluster`), size and whether the `keep` rule drops
    them ("first": all but the centre; "verified": decided by the flag rows later; "key": all but
    the member with the highest keep key, ties to the smallest `_pos`), routed by `_pos` range."""
    keys, nbrs = _records(frames, dtype)
    records = _frame(keys, nbrs, dtype).filter(pl.col(NBR) > pl.col(KEY))
    members = pl.concat([
        records.select(pl.col(NBR).alias(POSITION), pl.col(KEY).alias(CLUSTER)),
        records.select(pl.col(KEY).alias(POSITION), pl.col(KEY).alias(CLUSTER)).unique(),
    ])
    if keep == "key":
        keys = (pl.scan_parquet([local_copy(f) for f in summary_files]).select(pl.col(POSITION).cast(dtype), KEEP_KEY)
                .join(members.lazy(), on=POSITION, how="semi").collect(engine="streaming"))  # summaries streamed
        members = keys.join(members, on=POSITION)
        keeper = (pl.col(POSITION).sort_by([KEEP_KEY, POSITION], descending=[True, False], nulls_last=True)
                  .first().over(CLUSTER))
        dropped = pl.col(POSITION) != keeper
    elif keep == "first":
        dropped = pl.col(POSITION) != pl.col(CLUSTER)
    else:
        dropped = pl.lit(False)
    rows = members.select(POSITION, CLUSTER, pl.len().over(CLUSTER).cast(pl.UInt32).alias(CLUSTER_SIZE),
                          dropped.alias(DROP))
    return route(rows, range_partition(POSITION, cuts), partitions), {}


def decide(frames: list[pl.DataFrame], dtype: pl.DataType, pos_dtype: pl.DataType,
           keep: str) -> tuple[list, dict]:
    """One `_pos` range of the decision table, sorted (keep="verified": a member is dropped exactly
    when it has a smaller partner in the original pairs)."""
    rows = _with(frames, CLUSTER)
    if rows is None:
        rows = pl.DataFrame(schema={POSITION: dtype, CLUSTER: dtype, CLUSTER_SIZE: pl.UInt32, DROP: pl.Boolean})
    if keep == "verified":
        flags = _with(frames, NODE)
        flagged = flags[NODE] if flags is not None else pl.Series(NODE, [], dtype=dtype)
        rows = rows.with_columns(pl.col(POSITION).is_in(flagged.implode()).alias(DROP))
    part = rows.sort(POSITION).select(
        pl.col(POSITION).cast(pos_dtype),
        pl.col(CLUSTER).cast(pos_dtype),
        CLUSTER_SIZE,
        pl.when(DROP).then(pl.lit(REASON)).otherwise(None).cast(pl.String).alias(DROP_REASON),
    )
    return [part], {"rows": part.height}


# --- the driver -----------------------------------------------------------------------------

def keep_mode(keep: str, verified: bool) -> str:
    """How `clusters`/`decide` pick keepers for a `minhash_dedup` keep rule."""
    if keep == "first":
        return "verified" if verified else "first"
    return "key"


def combine_pairs(stage: Any, runner: TaskRunner, pair_inputs: Sequence[Sequence[Handle]],
                  summary_files: Sequence[str | Path], partitions: int, task_files: Sequence[str] | None = None,
                  stats: dict | None = None) -> DecisionParts:
    """`stage.decisions` (a `minhash_dedup` stage) of the pairs behind `pair_inputs`, in partitions;
    the tasks read keep keys from `task_files` (e.g. the summaries' object-store URLs) where given."""
    pos_dtype = pl.scan_parquet([str(f) for f in summary_files]).collect_schema()[POSITION]
    keep = keep_mode(stage.params.keep, stage.params.verify_jaccard is not None)
    files = task_files if task_files is not None else summary_files
    return partitioned_decisions(runner, pair_inputs, partitions, keep=keep, pos_dtype=pos_dtype,
                                 summary_files=[str(f) for f in files], stats=stats)


def max_rounds(nodes: int) -> int:
    """A bound on Large-Star/Small-Star rounds (O(log² n)); reaching it is a bug, not a slow input."""
    depth = max(2, math.ceil(math.log2(nodes + 2)))
    return 4 * depth * depth


def partitioned_decisions(
    runner: TaskRunner, pair_inputs: Sequence[Sequence[Handle]], partitions: int, *, keep: str,
    pos_dtype: pl.DataType, summary_files: Sequence[str], stats: dict | None = None,
) -> DecisionParts:
    """The `minhash_dedup` decision table of the duplicate pairs behind `pair_inputs` (one list of
    pair frames per task of the first step: e.g. the MinHash partitions' results), computed in
    `partitions` partitions by `runner`; `keep` from `keep_mode`. `stats`, if given, receives the
    number of rounds and edges."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    dtype, files = pos_dtype, [str(f) for f in summary_files]
    schema = {POSITION: pos_dtype, CLUSTER: pos_dtype, CLUSTER_SIZE: pl.UInt32, DROP_REASON: pl.String}
    outs, infos = runner.map(start, pair_inputs, (partitions, dtype), partitions)
    lows = [i["low"] for i in infos if i["low"] is not None]
    if not lows:
        runner.drop([h for task in outs for h in task])
        return DecisionParts(runner, [], schema)
    cuts = range_cuts(min(lows), max(i["high"] for i in infos if i["high"] is not None), partitions)
    pairs, P = sum(i["pairs"] for i in infos), partitions
    edges, rounds, limit = regroup(outs, P), 0, max_rounds(2 * pairs)
    flags: list[list[Handle]] = [[] for _ in range(P)]
    finished: list[list[Handle]] = [[] for _ in range(P)]  # records (centre, leaf) of finished stars
    while True:
        rounds += 1
        if rounds > limit:
            raise RuntimeError(f"connected components did not converge in {limit} rounds")
        first_verified = rounds == 1 and keep == "verified"
        outs, infos = runner.map(large_star, edges, (P, dtype, cuts if first_verified else None),
                                 3 * P if first_verified else 2 * P)
        runner.drop([h for task in edges for h in task])
        if first_verified:
            flags = regroup([task[2 * P:] for task in outs], P)
        edges, notes = regroup([t[:P] for t in outs], P), regroup([t[P:2 * P] for t in outs], P)
        if sum(i["violations"] for i in infos) == 0:  # every component left is a star at its smallest node
            runner.drop([h for task in notes for h in task])
            break
        inputs = [e + n for e, n in zip(edges, notes)]
        outs, _ = runner.map(small_star, inputs, (P, dtype), P + 1)
        runner.drop([h for task in inputs for h in task])
        for p, task in enumerate(outs):  # a partition's finished stars stay with it
            finished[p] += [task[P]] if task[P] is not None else []
        edges = regroup([t[:P] for t in outs], P)
    if stats is not None:
        stats.update(rounds=rounds, pairs=pairs)
    outs, _ = runner.map(to_centres, edges, (P, dtype), P)
    runner.drop([h for task in edges for h in task])
    stars = [c + f for c, f in zip(regroup(outs, P), finished)]
    outs, _ = runner.map(clusters, stars, (P, dtype, cuts, keep, files), P)
    runner.drop([h for task in stars for h in task])
    inputs = [rows + flag for rows, flag in zip(regroup(outs, P), flags)]
    outs, _ = runner.map(decide, inputs, (dtype, pos_dtype, keep), 1)
    runner.drop([h for task in inputs for h in task])
    return DecisionParts(runner, [task[0] for task in outs], schema)

