"""line_dedup's paragraph unit splits on blank lines whatever the line endings (\\n or \\r\\n)."""

from __future__ import annotations

import polars as pl

from datamill.curate.dedup.lines import LineDedup, LineDedupParams
from datamill.curate.engine.stage import DROP_REASON, POSITION

FOOTER = "This article is licensed under the Creative Commons Attribution 4.0 licence."


def run_barrier(stage: LineDedup, batch: pl.DataFrame) -> pl.DataFrame:
    decision = stage.reduce(stage.summarize(batch).lazy())
    return stage.apply(batch, decision)


def test_paragraphs_separated_by_crlf_blank_lines_are_units():
    texts = [f"Story number {i} about the mill and the river.\r\n\r\n{FOOTER}" for i in range(6)]
    batch = pl.DataFrame({"text": texts, POSITION: pl.Series(range(6), dtype=pl.UInt64)})

    result = run_barrier(LineDedup(LineDedupParams(unit="paragraph", max_documents=3)), batch)

    assert result["text"].to_list() == [f"Story number {i} about the mill and the river." for i in range(6)]
    assert result["boilerplate_lines_removed"].to_list() == [1] * 6
    assert result[DROP_REASON].to_list() == [None] * 6
