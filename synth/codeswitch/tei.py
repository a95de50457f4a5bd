"""Read FreeDict TEI XML dictionaries into lexicon rows.

FreeDict TEI: every `entry` has `form/orth` (the headword; several allowed), optionally
`gramGrp/pos`, and senses whose `cit[@type="trans"]/quote` are the translations. Elements are in
the TEI namespace (`http://www.tei-c.org/ns/1.0`) in current files; files without a namespace are
read too. The file is streamed with `iterparse`, so large dictionaries do not build a whole tree.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl

TEI_NS = "http://www.tei-c.org/ns/1.0"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _texts(entry: ET.Element, path: list[str], attribute: tuple[str, str] | None = None) -> list[str]:
    """Text of descendants reached by a path of local tag names (namespace-agnostic)."""
    found = [entry]
    for step, name in enumerate(path):
        nxt = []
        for element in found:
            for child in element.iter() if step == 0 else element:
                if child is not element and _local(child.tag) == name:
                    if attribute is None or name != "cit" or child.get(attribute[0]) == attribute[1]:
                        nxt.append(child)
        found = nxt
    return ["".join(e.itertext()).strip() for e in found if "".join(e.itertext()).strip()]


def read_tei(path: str | Path, source_lang: str, target_lang: str) -> pl.DataFrame:
    """Lexicon rows (source_lang, source_term, target_lang, target_term, pos, type) of a TEI dictionary."""
    path = Path(path)
    rows: list[tuple[str, str, str | None]] = []
    try:
        for _, element in ET.iterparse(path, events=("end",)):
            if _local(element.tag) != "entry":
                continue
            heads = _texts(element, ["form", "orth"])
            pos = next(iter(_texts(element, ["gramGrp", "pos"])), None)
            translations = _texts(element, ["sense", "cit", "quote"], attribute=("type", "trans"))
            rows.extend((head, quote, pos) for head in heads for quote in translations)
            element.clear()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not well-formed TEI XML: {err}") from None
    table = pl.DataFrame(rows, schema={"source_term": pl.String, "target_term": pl.String, "pos": pl.String},
                         orient="row")
    return table.select(
        pl.lit(source_lang).alias("source_lang"), "source_term", pl.lit(target_lang).alias("target_lang"),
        "target_term", "pos", pl.lit("word").alias("type"),
    ).unique(maintain_order=True)
