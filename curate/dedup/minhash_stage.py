"""Near-duplicate removal across the whole corpus with MinHash LSH, as a barrier stage.

Map (`summarize`, per shard batch): shingle each document, compute its MinHash signature
(identical to datasketch's), cut it into `bands` × `rows` and hash each band to a uint64.
Reduce (once): documents sharing a band hash in the same band are candidates. Without
`verify_jaccard` each candidate is linked to the smallest position in its bucket; with it, every
pair in a bucket (each member against the bucket's first and its `verify_window` predecessors) is
checked, and only pairs whose shingle sets reach that Jaccard similarity become links. Connected
components of the links are clusters; each cluster keeps one document by the `keep` rule (ties:
smallest `_pos`), except with verified pairs and keep=first, where a document is dropped exactly
when it has a verified earlier partner.
Apply (per shard): join the decisions on `_pos`; every non-keeper gets `_drop_reason`
"near_duplicate"; every row gets `dup_cluster` (its cluster's smallest `_pos`) and
`dup_cluster_size` (1 for unique documents).

Deterministic: a signature depends only on the document's text, and the reduce only on the
(position, band hash) pairs, so decisions do not depend on how rows were split into shards or
batches, or on the order of summaries.

Memory per document:
- map: transient, bounded per chunk of ~1M shingles (~50 B per shingle while shingling) plus
  the batch's signatures (4 B × num_perm for "affine32", 8 B for the 64-bit schemes).
- summary (what travels to the reduce): 8 B `_pos` + 8 B per band (+ 8 B `_keep_key` unless
  keep=first) — 80 B/document at the default 9 bands × 12 rows (num_perm 112, threshold 0.8);
  with `verify_jaccard` also the text.
- reduce: one band at a time, ~16 B/document plus polars' group-by table; then 16 B per
  candidate link, union–find arrays over linked documents only, and the keep keys of clustered
  documents (~150 B per link at peak; with `executor.reduce_partitions` > 1 and more links than
  `executor.combine_memory_mib` allows, connected components run partitioned instead:
  `components_partitioned.py`). `verify_jaccard` pairs each bucket member with at most `verify_window` + 1 others
  (16 B per pair), additionally loads the text of paired documents only and their
  shingle-hash sets (16 B per shingle), and joins the links in chunks of ~4M shingle rows.
The decision table holds clustered documents only (~30 B each).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from datamill.curate.dedup.components import connected_components
from datamill.curate.dedup.minhash import MinHasher, Scheme, band_hashes, band_layout, text_signatures
from datamill.curate.dedup.shingles import DOC, SHINGLE, ShingleKind, Shingler
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import DROP_REASON, POSITION, BarrierStage, FilterParams

CLUSTER = "dup_cluster"
CLUSTER_SIZE = "dup_cluster_size"
REASON = "near_duplicate"
KEEP_KEY = "_keep_key"
BAND_PREFIX = "band_"
TEXT = "text"

_VERIFY_CHUNK_ROWS = 1 << 22
"""verify_jaccard joins candidate links with shingle sets in chunks of about this many rows."""


class ShinglingParams(FilterParams):
    """The shingling options shared by the MinHash stages."""

    ngram: int = Field(5, ge=1, description="Shingle length in tokens (words or characters).")
    shingle: ShingleKind = Field("word", description="word: whitespace-separated words; char: characters.")
    lowercase: bool = Field(True, description="Lowercase before shingling.")
    whitespace: bool = Field(
        True, description="Collapse and trim whitespace before char shingling (word shingles split on any whitespace)."
    )
    punctuation: bool = Field(False, description="Remove punctuation and symbols before shingling.")

    def shingler(self) -> Shingler:
        return Shingler(self.shingle, self.ngram, self.lowercase, self.whitespace, self.punctuation)


class MinHashParams(ShinglingParams):
    """Shingling, the MinHash permutations and the LSH band layout, shared by the MinHash stages."""

    num_perm: int = Field(112, ge=1, le=8192, description="MinHash permutations (signature length).")
    bands: int | None = Field(None, ge=1, description="LSH bands; default: from threshold (or num_perm // rows).")
    rows: int | None = Field(None, ge=1, description="Values per band; default: from threshold (or num_perm // bands).")
    threshold: float = Field(
        0.8, gt=0, lt=1,
        description="Jaccard similarity the bands×rows layout is tuned for (datasketch MinHashLSH's "
        "optimizer, equal false positive/negative weights); used when neither bands nor rows is set.",
    )
    seed: int = Field(1, ge=0, lt=2**32, description="Permutation seed (datasketch MinHash `seed`).")
    scheme: Scheme = Field("affine32", description="datasketch permutation scheme (2.x default: affine32).")

    @model_validator(mode="after")
    def _check_layout(self) -> MinHashParams:
        bands, rows = self.band_layout()
        if bands * rows > self.num_perm:
            raise ValueError(f"bands*rows = {bands}*{rows} exceeds num_perm = {self.num_perm}")
        return self

    def band_layout(self) -> tuple[int, int]:
        """(bands, rows) actually used."""
        return band_layout(self.num_perm, self.bands, self.rows, self.threshold)


class MinHashDedupParams(MinHashParams):
    keep: Literal["first", "longest"] | str = Field(
        "first",
        description="Which document of a cluster survives: first (smallest position), longest (most "
        "characters), or the name of a numeric column (highest value; nulls lose). Ties: first.",
    )
    verify_jaccard: float | None = Field(
        None, gt=0, le=1,
        description="If set, every candidate pair in a band bucket is checked and counts only if the true "
        "Jaccard similarity of the two shingle sets is at least this; clusters are built from checked pairs "
        "only (removes LSH false positives; the summaries then carry the text).",
    )
    verify_window: int = Field(
        64, ge=1,
        description="With verify_jaccard: each bucket member is checked against the bucket's first document "
        "and the up to this many members before it (every pair in buckets of up to window+1 documents; "
        "bounds the work of huge buckets).",
    )

@register_stage
class MinHashDedup(BarrierStage):
    """Cluster near-duplicate documents (MinHash LSH) and keep one per cluster."""

    type_name = "minhash_dedup"
    Params: ClassVar = MinHashDedupParams
    outputs = (CLUSTER, CLUSTER_SIZE)

    def __init__(self, params: MinHashDedupParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        p: MinHashDedupParams = self.params
        self.bands, self.rows = p.band_layout()
        self.hasher = MinHasher(p.num_perm, p.seed, p.scheme)
        self.shingler = p.shingler()

    @property
    def band_columns(self) -> list[str]:
        return [f"{BAND_PREFIX}{i}" for i in range(self.bands)]

    def _keep_key(self, batch: pl.DataFrame) -> pl.Expr | None:
        keep = self.params.keep
        if keep == "first":
            return None
        if keep == "longest":
            return pl.col(TEXT).str.len_chars().cast(pl.Float64).alias(KEEP_KEY)
        if keep not in batch.columns:
            raise ValueError(f"{self.name}: keep={keep!r} names no column (have: {', '.join(batch.columns)})")
        if not batch.schema[keep].is_numeric():
            raise ValueError(f"{self.name}: keep column {keep!r} is {batch.schema[keep]}, expected a number")
        return pl.col(keep).cast(pl.Float64).alias(KEEP_KEY)

    def summarize(self, batch: pl.DataFrame) -> pl.DataFrame:
        """`_pos`, one uint64 per band (null for documents without shingles), `_keep_key` when
        the keep rule needs it, `text` when `verify_jaccard` is set."""
        signatures, has_shingles = text_signatures(batch[TEXT], self.shingler, self.hasher)
        hashes = band_hashes(signatures, self.bands, self.rows)
        bands = pl.DataFrame(
            {name: hashes[:, i] for i, name in enumerate(self.band_columns)} | {"_has": has_shingles}
        ).select(pl.when(pl.col("_has")).then(pl.col(name)).alias(name) for name in self.band_columns)
        extra = [key] if (key := self._keep_key(batch)) is not None else []
        if self.params.verify_jaccard is not None:
            extra.append(pl.col(TEXT))
        return pl.concat([batch.select(POSITION), bands, batch.select(extra)], how="horizontal")

    def _candidate_links(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        """(`src`, `dst`): each document sharing a band bucket with others, linked to the bucket's
        smallest position (`dst` < `src`); unique over all bands."""
        links = []
        for band in self.band_columns:
            members = summaries.select(POSITION, pl.col(band).alias("_h")).drop_nulls("_h")
            buckets = (
                members.group_by("_h")
                .agg(pl.col(POSITION).min().alias("dst"), pl.len().alias("_n"))
                .filter(pl.col("_n") > 1)
            )
            links.append(
                members.join(buckets, on="_h")
                .filter(pl.col(POSITION) != pl.col("dst"))
                .select(pl.col(POSITION).alias("src"), "dst")
            )
        return pl.concat(links, parallel=False).unique().collect()

    def bucket_pairs(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        """(`src`, `dst`), `dst` < `src`: the pairs to verify. In each bucket (sorted by position)
        every member is paired with the bucket's first member and with the `verify_window` members
        before it, so small buckets give all their pairs; unique over all bands."""
        window = self.params.verify_window
        pairs = []
        for band in self.band_columns:
            members = (
                summaries.select(POSITION, pl.col(band).alias("_h"))
                .drop_nulls("_h")
                .filter(pl.len().over("_h") > 1)
                .sort("_h", POSITION)
                .collect()
            )
            if not members.height:
                continue
            first = members.select(pl.col(POSITION).alias("src"), pl.col(POSITION).first().over("_h").alias("dst"))
            pairs.append(first.filter(pl.col("src") != pl.col("dst")))
            for back in range(1, min(window, members.height - 1) + 1):
                same_bucket = (pl.col("_h").shift(back) == pl.col("_h")).fill_null(False)
                pairs.append(members.select(
                    pl.col(POSITION).alias("src"), pl.col(POSITION).shift(back).alias("dst"), same_bucket.alias("_same")
                ).filter("_same").drop("_same"))
        if not pairs:
            return pl.DataFrame({"src": [], "dst": []}, schema={"src": summaries.collect_schema()[POSITION],
                                                                "dst": summaries.collect_schema()[POSITION]})
        return pl.concat(pairs).unique()

    def _verified_links(self, links: pl.DataFrame, summaries: pl.LazyFrame) -> pl.DataFrame:
        """The links whose documents' shingle sets have Jaccard similarity >= verify_jaccard."""
        linked = pl.concat([links["src"], links["dst"]]).unique().to_frame(POSITION)
        texts = summaries.select(POSITION, TEXT).join(linked.lazy(), on=POSITION, how="semi").collect()
        table = self.shingler.table(texts[TEXT])
        sets = (
            table.select(texts[POSITION].gather(table[DOC]).alias(POSITION), pl.col(SHINGLE).hash(seed=0).alias("_s"))
            .unique()
        )
        sizes = sets.group_by(POSITION).len("_size")
        sized = links.join(sizes.rename({POSITION: "src", "_size": "_a"}), on="src").join(
            sizes.rename({POSITION: "dst", "_size": "_b"}), on="dst"
        )
        chunk = (pl.col("_a").cum_sum() // _VERIFY_CHUNK_ROWS).alias("_chunk")
        kept = []
        for part in sized.with_columns(chunk).partition_by("_chunk"):
            shared = (
                part.join(sets.rename({POSITION: "src"}), on="src")
                .join(sets.rename({POSITION: "dst"}), on=["dst", "_s"])
                .group_by("src", "dst")
                .len("_shared")
            )
            scored = part.join(shared, on=["src", "dst"], how="left").with_columns(pl.col("_shared").fill_null(0))
            jaccard = pl.col("_shared") / (pl.col("_a") + pl.col("_b") - pl.col("_shared"))
            kept.append(scored.filter(jaccard >= self.params.verify_jaccard).select("src", "dst"))
        return pl.concat(kept) if kept else links.clear()

    def reduce(self, summaries: pl.LazyFrame) -> pl.DataFrame:
        """Decision rows for documents in clusters of two or more: `_pos`, `dup_cluster`,
        `dup_cluster_size`, `_drop_reason` (null for the keeper), sorted by `_pos`."""
        return self.decisions(self.links(summaries), summaries)

    def links(self, summaries: pl.LazyFrame, texts: pl.LazyFrame | None = None) -> pl.DataFrame:
        """(`src`, `dst`) duplicate pairs found in the band buckets of `summaries` (verified
        against `verify_jaccard` with the texts of `texts`, default `summaries`). Each bucket's
        pairs depend on that bucket alone, so the pairs of any partition of the buckets (see
        `partitioned.py`) together are exactly the pairs of the whole."""
        if self.params.verify_jaccard is None:
            return self._candidate_links(summaries)
        pairs = self.bucket_pairs(summaries)
        return self._verified_links(pairs, summaries if texts is None else texts) if pairs.height else pairs

    def decisions(self, links: pl.DataFrame, summaries: pl.LazyFrame) -> pl.DataFrame:
        """The decision table (see `reduce`) from duplicate pairs: their connected components,
        one keeper each; `summaries` gives the `_pos` type and the keep keys. With verified pairs
        and keep=first, a document is dropped exactly when it has a verified earlier partner: one
        whose only partners come later (A~C, B~C, A≁B) is kept even though its component's first
        document is not like it."""
        pos_dtype = summaries.collect_schema()[POSITION]
        nodes, labels = connected_components(links["src"].to_numpy(), links["dst"].to_numpy())
        clusters = pl.DataFrame(
            {POSITION: pl.Series(nodes, dtype=pos_dtype), CLUSTER: pl.Series(labels, dtype=pos_dtype)}
        )
        if self.params.keep == "first" and self.params.verify_jaccard is not None:
            later = links.select(pl.max_horizontal("src", "dst").cast(pos_dtype)).to_series()
            dropped = pl.col(POSITION).is_in(later.implode())
        elif self.params.keep == "first":
            dropped = pl.col(POSITION) != pl.col(CLUSTER)
        else:
            clusters = summaries.select(POSITION, KEEP_KEY).join(clusters.lazy(), on=POSITION).collect()
            keeper = (
                pl.col(POSITION)
                .sort_by([KEEP_KEY, POSITION], descending=[True, False], nulls_last=True)
                .first()
                .over(CLUSTER)
            )
            dropped = pl.col(POSITION) != keeper
        return clusters.select(
            POSITION,
            CLUSTER,
            pl.len().over(CLUSTER).cast(pl.UInt32).alias(CLUSTER_SIZE),
            pl.when(dropped).then(pl.lit(REASON)).otherwise(None).alias(DROP_REASON),
        ).sort(POSITION)

    def apply(self, batch: pl.DataFrame, decision: pl.DataFrame) -> pl.DataFrame:
        """`batch` in its order with `dup_cluster`, `dup_cluster_size` and `_drop_reason`."""
        pos_dtype = batch.schema[POSITION]
        decision = decision.select(
            pl.col(POSITION).cast(pos_dtype),
            pl.col(CLUSTER).cast(pos_dtype),
            pl.col(CLUSTER_SIZE).cast(pl.UInt32),
            pl.col(DROP_REASON).cast(pl.String),
        )
        previous = [c for c in (CLUSTER, CLUSTER_SIZE, DROP_REASON) if c in batch.columns]
        joined = batch.drop(previous).join(decision, on=POSITION, how="left", maintain_order="left")
        return joined.with_columns(
            pl.col(CLUSTER).fill_null(pl.col(POSITION)),
            pl.col(CLUSTER_SIZE).fill_null(1),
        )
