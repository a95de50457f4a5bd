"""Exact code-mixing metrics from known switched spans: CMI (Das & Gambäck 2014) and switch points.

When code-switching is made by replacing lexicon or entity spans, every token's language is known:
tokens inside a `cs_spans` span are in that span's language, the rest in the source language.
Tokens are runs of letters (`\\p{L}+`); digits and punctuation are language-independent and not
counted. Per text, with n tokens and the largest single-language count max_w,
CMI = 100 × (1 − max_w / n) (0 for a text without tokens), `cs_ratio` = 1 − max_w / n, and
`switch_points` counts neighbouring tokens in different languages. Word-level language ID
(`codeswitch_verify`) can only estimate these; for lexicon output they are computed here exactly.
"""

from __future__ import annotations

from itertools import pairwise

import polars as pl

TOKEN = r"\p{L}+"
SPAN_METRICS_SCHEMA = {"cs_cmi": pl.Float64, "cs_ratio": pl.Float64, "switch_points": pl.UInt32,
                       "matrix_lang": pl.String}


def segments(text: str, spans: list[dict], source_lang: str) -> list[tuple[str, int]]:
    """(language, token count) of the text's stretches in order: source text between spans, spans."""
    import regex

    def count(piece: str) -> int:
        return len(regex.findall(TOKEN, piece))

    out, done = [], 0
    for span in sorted(spans or [], key=lambda s: s["start"]):
        out.append((source_lang, count(text[done:span["start"]])))
        out.append((span["lang"], count(text[span["start"]:span["end"]])))
        done = span["end"]
    out.append((source_lang, count(text[done:])))
    return [(lang, n) for lang, n in out if n]


def span_metrics(texts: pl.Series, spans: pl.Series, source_lang: str) -> pl.DataFrame:
    """Per text: cs_cmi, cs_ratio, switch_points and matrix_lang, from its switched spans."""
    rows = []
    for text, text_spans in zip(texts.fill_null("").to_list(), spans.to_list()):
        parts = segments(text, text_spans or [], source_lang)
        per_lang: dict[str, int] = {}
        for lang, n in parts:
            per_lang[lang] = per_lang.get(lang, 0) + n
        total = sum(per_lang.values())
        matrix = max(per_lang, key=lambda lang: (per_lang[lang], lang == source_lang)) if per_lang else None
        ratio = 1 - per_lang[matrix] / total if total else 0.0
        switches = sum(a[0] != b[0] for a, b in pairwise(parts))
        rows.append((100 * ratio, ratio, switches, matrix))
    return pl.DataFrame(rows, schema=SPAN_METRICS_SCHEMA, orient="row")
