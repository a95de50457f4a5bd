"""Lexicon and entity code-switching (EntityCS-style): replace lexicon matches with their translations.

The `codeswitch_lexicon` stage finds every lexicon term in the text (Aho-Corasick over the
lower-cased text via `pyahocorasick`, leftmost-longest, whole words only, multiword terms
included) and switches some of them into a target language, seeded by record id, so the output
is the same for any batching or worker count:

- `p`: every match is switched with probability p; or `ratio`: matches are switched in a seeded
  random order until that share of the record's word tokens is switched (never more).
- `target_per: sentence` picks one target language per sentence; `span` picks one per match.
- `units: entities` switches only entity spans: rows of an entity table (`type: entity`) or
  multiword matches whose words are all capitalized. Matches made only of stop words (function
  words, lists in `data/stopwords/`) are never switched in that mode, and not in `words` mode
  unless `skip_stopwords: false`.
- Case: a lexicon term with capitals (a name) must match exactly; a lower-case term matches any
  case and its translation takes the case shape of the matched text (Title, UPPER).

What is never switched: stop words (function words), single letters and terms with digits, and
tokens inside code, options, paths or identifiers (`--proxy-key-type`, `key_file`, `a/key`,
`key.pem`, text between backticks), nor all-capital abbreviations of up to 2 letters. With a
part-of-speech column in the lexicon (FreeDict), only
senses whose part of speech is in `pos` are used (default nouns: noun → noun; a tagged dictionary's
untagged rows, mostly inflected verb forms in FreeDict, are not used; an untagged lexicon such as
FreeDict eng-spa borrows its English terms' parts of speech from the tagged lexicons in
`lexicons` and `pos_from`, see `pos.py`); a term that also
has other parts of speech (`run`, `free`) is switched only after a determiner or preposition
("the run"), where it is a noun. Plural stays plural: a term that looks plural (`licenses`)
takes only translations the lexicon marks `pl`, a singular one never those. Without a context
model, `sense: most_frequent` takes the lexicon's rank-1 translation (FreeDict: see `dictd.py`).

Outputs: the switched `text`, `source_text` (the original, for drift checks), `cs_spans` (list
of {start, end, lang, source_term}: character offsets of every switched span in the output
text, so training can mask them), `cs_switches` (how many spans were switched) and, computed
exactly from the spans (`metrics.py`), `cs_cmi` (Code-Mixing Index) and `cs_switch_points`.

Everything after matching is polars: the match table is joined with the lexicon, filtered,
ranked and spliced back into the text with string slices and a grouped join.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datamill.curate.engine.paths import read_bytes
from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import Stage, StageParams
from datamill.synth.codeswitch.lexicon import combine, data_path, lexicon_exists, load_lexicon
from datamill.synth.codeswitch.metrics import span_metrics
from datamill.synth.codeswitch.pos import borrow_pos, is_tagged, source_term_pos

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
SPAN_TYPE = pl.Struct({"start": pl.Int64, "end": pl.Int64, "lang": pl.String, "source_term": pl.String})
SENTENCE_END = r"[.!?]+(?:\s|$)"
MATCH_SCHEMA = {"doc": pl.UInt32, "start": pl.Int64, "end": pl.Int64, "key_id": pl.Int64}
NOUN_CONTEXT = ["the", "a", "an", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our",
                "their", "any", "each", "every", "no", "some", "of", "for", "with", "without", "in", "on", "by",
                "from", "such", "another", "other", "all", "new", "same"]
"""Words after which a noun/verb-ambiguous term is read as a noun ("the run", "of license")."""
CODE_BEFORE = r"[-_/\\.$@#=<>`:~%]$"
CODE_AFTER = r"^(?:[-_/\\=<>`(\[%]|\.\w|:\w)"


class LexiconSource(BaseModel):
    """A lexicon file with the language pair that dictd/TEI files do not carry."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Lexicon file (.tsv/.jsonl/.index/.tei/.xml, or entity table) or shipped name.")
    source_lang: str | None = Field(None, description="Language of the source terms (needed for dictd/TEI).")
    target_lang: str | None = Field(None, description="Language of the translations (needed for dictd/TEI).")


class SwitchParams(StageParams):
    lexicons: list[str | LexiconSource] = Field(
        default_factory=lambda: ["en-es.tsv", "en-de.tsv", "entities.tsv"], min_length=1,
        description="Lexicon files or shipped names; a mapping {path, source_lang, target_lang} for dictd/TEI.")
    source_lang: str = Field("en", description="Language of the input text.")
    target_langs: list[str] | None = Field(None, min_length=1, description="Switch into these; null: all in the lexicons.")
    units: Literal["words", "entities"] = Field("words", description="Switch any lexicon match, or entity spans only.")
    p: Probability = Field(0.5, description="Probability that a match is switched (ignored when `ratio` is set).")
    ratio: Probability | None = Field(None, description="Switch (at most) this share of the word tokens instead.")
    target_per: Literal["sentence", "span"] = Field("sentence", description="One target language per sentence or per span.")
    skip_stopwords: bool = Field(True, description="Never switch matches made only of stop words.")
    pos: list[str] | None = Field(["noun"], description="Use only lexicon senses with these parts of speech "
                                  "(rows without one are kept); null: any.")
    pos_from: list[str | LexiconSource] = Field(
        default_factory=list, description="Tagged lexicons (e.g. FreeDict eng-deu) whose source terms' parts of "
        "speech are given to untagged lexicons (eng-spa); tagged entries of `lexicons` are always used too.")
    sense: Literal["most_frequent", "random"] = Field(
        "most_frequent", description="Without a context model: the lexicon's rank-1 translation, or a seeded pick.")
    stopwords: dict[str, str] = Field(
        default_factory=dict, description="Extra stop-word files (paths or URLs) by language (one word a line); shipped: en, es, de, mt.")

    def check_paths(self, base_dir: str) -> list[str]:
        """Lexicons are read as the stage reads them: a path, else a shipped file of that name."""
        problems = []
        named = [(entry, f"lexicons[{i}]") for i, entry in enumerate(self.lexicons)]
        named += [(entry, f"pos_from[{i}]") for i, entry in enumerate(self.pos_from)]
        for entry, where in named:
            path, key = (entry, where) if isinstance(entry, str) else (entry.path, f"{where}.path")
            if not lexicon_exists(path):
                problems.append(f"{key}: lexicon {path!r} not found (neither a path nor a file in {data_path('')})")
        return problems

    @model_validator(mode="after")
    def _entities_skip_function_words(self):
        if self.units == "entities" and not self.skip_stopwords:
            raise ValueError("units: entities never switches function words; skip_stopwords must stay true")
        return self


def load_stopwords(lang: str, extra: dict[str, str]) -> list[str]:
    """The stop words of a language: a user file if given, else the shipped list (empty if none)."""
    path = extra.get(lang)
    shipped = data_path(f"stopwords/{lang}.txt")
    if path is None and not shipped.is_file():
        return []
    text = read_bytes(path).decode("utf-8") if path else shipped.read_text(encoding="utf-8")
    return sorted({w.strip().lower() for w in text.splitlines() if w.strip()})


def match_key(texts: pl.Expr) -> pl.Expr:
    """The text the automaton searches: lower-cased (when that keeps every offset) with non-word
    characters as spaces, so a key ` term` can only start at a word boundary."""
    lowered = texts.str.to_lowercase()
    same = lowered.str.len_chars() == texts.str.len_chars()
    return pl.when(same).then(lowered).otherwise(texts).str.replace_all(r"[^\w]", " ")


@register_stage
class LexiconSwitch(Stage):
    """Switch lexicon / entity matches into target languages; adds `cs_spans` with output offsets."""

    type_name: ClassVar[str] = "codeswitch_lexicon"
    Params: ClassVar[type[SwitchParams]] = SwitchParams
    inputs: ClassVar[tuple[str, ...]] = ("id", "text")
    outputs: ClassVar[tuple[str, ...]] = ("text", "source_text", "cs_spans", "cs_switches", "cs_cmi", "cs_switch_points")
    params: SwitchParams

    def __init__(self, params: SwitchParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self._automaton = None
        self._candidates: pl.DataFrame | None = None
        self._langs: list[str] = []

    def lexicon(self) -> pl.DataFrame:
        """The combined lexicon rows this stage can use (source language and targets applied)."""
        p = self.params
        tables = [self.load(entry) for entry in p.lexicons]
        if p.pos is not None:
            tagged = [t for t in tables if is_tagged(t)]
            term_pos = source_term_pos(tagged + [self.load(entry) for entry in p.pos_from], p.source_lang)
            # untagged rows of a tagged dictionary are mostly inflections: dropped; untagged lexicons borrow tags
            tables = [t.filter(pl.col("pos").is_not_null()) if is_tagged(t) else borrow_pos(t, term_pos)
                      for t in tables]
        table = combine(tables).filter(pl.col("source_lang").is_null() | (pl.col("source_lang") == p.source_lang))
        if p.target_langs is not None:
            table = table.filter(pl.col("target_lang").is_in(p.target_langs))
        table = table.filter(pl.col("target_lang") != p.source_lang)
        if table.is_empty():
            raise ValueError(f"stage {self.name!r}: the lexicons {p.lexicons} have no {p.source_lang}→"
                             f"{p.target_langs or 'any'} entries")
        return table

    def load(self, entry: str | LexiconSource) -> pl.DataFrame:
        spec = entry if isinstance(entry, LexiconSource) else LexiconSource(path=entry)
        return load_lexicon(spec.path, spec.source_lang or self.params.source_lang, spec.target_lang)

    def setup(self) -> None:
        import ahocorasick

        p = self.params
        table = self.lexicon().with_columns(
            match_key(pl.col("source_term")).str.strip_chars().alias("key"),
            (pl.col("source_term") != pl.col("source_term").str.to_lowercase()).alias("case_sensitive"),
        ).filter((pl.col("key").str.len_chars() > 1) & ~pl.col("key").str.contains(r"\d"))
        keys = table.select("key").unique(maintain_order=True).with_row_index("key_id").with_columns(
            pl.col("key_id").cast(pl.Int64))
        stop = load_stopwords(p.source_lang, p.stopwords) if p.skip_stopwords else []
        keys = keys.with_columns(
            pl.col("key").str.split(" ").list.eval(pl.element().is_in(stop) | (pl.element() == "")).list.all()
            .alias("only_stopwords"))
        automaton = ahocorasick.Automaton()
        for key_id, key in keys.select("key_id", "key").iter_rows():
            automaton.add_word(" " + key, (key_id, len(key)))
        automaton.make_automaton()
        self._automaton = automaton
        candidates = table.join(keys, on="key", maintain_order="left")
        if p.pos is not None:  # a term with other senses too is ambiguous: switched only in a noun context
            allowed = pl.col("pos").is_null() | pl.col("pos").is_in(p.pos)
            candidates = candidates.with_columns((~allowed).any().over("key").alias("ambiguous")).filter(allowed)
        else:
            candidates = candidates.with_columns(pl.lit(False).alias("ambiguous"))
        self._candidates = candidates
        self._langs = sorted(table["target_lang"].unique().to_list())

    def find_matches(self, haystacks: list[str]) -> pl.DataFrame:
        """Leftmost-longest whole-word matches: doc, start, end (char offsets) and key_id."""
        docs, starts, ends, key_ids = [], [], [], []
        for doc, hay in enumerate(haystacks):
            padded = " " + hay + " "
            for last, (key_id, length) in self._automaton.iter_long(padded):
                if padded[last + 1] == " ":  # the term ends at a word boundary too
                    docs.append(doc)
                    starts.append(last - length)
                    ends.append(last)
                    key_ids.append(key_id)
        return pl.DataFrame({"doc": docs, "start": starts, "end": ends, "key_id": key_ids}, schema=MATCH_SCHEMA)

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self._automaton is None:
            raise RuntimeError(f"stage {self.name!r}: call setup() before process()")
        docs = batch.select(pl.col("id").cast(pl.String), pl.col("text").fill_null("")).with_row_index("doc")
        haystacks = docs.select(match_key(pl.col("text"))).to_series().to_list()
        chosen = self.choose(docs, self.find_matches(haystacks))
        text, spans, switches = self.splice(docs, chosen)
        exact = span_metrics(text, spans, self.params.source_lang)
        return batch.with_columns(
            batch["text"].alias("source_text"), text.alias("text"), spans.alias("cs_spans"),
            switches.alias("cs_switches"), exact["cs_cmi"], exact["switch_points"].alias("cs_switch_points"))

    def choose(self, docs: pl.DataFrame, matches: pl.DataFrame) -> pl.DataFrame:
        """The matches to switch, one row each: doc, start, end, lang, source_term, replacement."""
        p, seed = self.params, self.seed
        rows = (
            matches.join(docs, on="doc")
            .with_columns(pl.col("text").str.slice(pl.col("start"), pl.col("end") - pl.col("start")).alias("matched"))
            .join(self._candidates, on="key_id")
            .filter(~pl.col("case_sensitive") | (pl.col("matched") == pl.col("source_term")))
            .filter(~pl.col("only_stopwords"))
            .filter(pl.col("target_term").str.to_lowercase() != pl.col("matched").str.to_lowercase())
            .filter(~in_code(pl.col("text"), pl.col("start"), pl.col("end")))
            .filter(~pl.col("matched").str.contains(r"^\p{Lu}{1,2}$"))  # an abbreviation (MA, ID), not a word
            .filter(~pl.col("ambiguous") | previous_word(pl.col("text"), pl.col("start")).is_in(NOUN_CONTEXT))
            .filter(number_agrees(pl.col("matched"), pl.col("number")))
        )
        if p.units == "entities":
            capitalized_multiword = pl.col("matched").str.contains(" ") & pl.col("matched").str.split(" ").list.eval(
                pl.element().str.contains(r"^\p{Lu}")).list.all()
            rows = rows.filter((pl.col("type") == "entity") | capitalized_multiword)
        unit = pl.concat_str(pl.col("id"), pl.lit("\x1f"), pl.col("start").cast(pl.String))
        if p.target_per == "sentence":
            sentence = pl.col("text").str.slice(0, pl.col("start")).str.count_matches(SENTENCE_END)
            pick = pl.concat_str(pl.col("id"), pl.lit("\x1f"), sentence.cast(pl.String)).hash(seed + 1)
            lang = pl.lit(pl.Series(self._langs)).get(pick % len(self._langs)) if len(self._langs) > 1 \
                else pl.lit(self._langs[0])
            rows = rows.filter(pl.col("target_lang") == lang)
        # one candidate per match: the target language (span mode) and synonym chosen by a seeded hash
        rows = (
            rows.with_columns(pl.concat_str(unit, pl.col("target_lang"), pl.col("target_term")).hash(seed + 2).alias("_h"),
                              (pl.col("rank") if p.sense == "most_frequent" else pl.lit(None, pl.Int32)).alias("_rank"))
            .sort("doc", "start", "_rank", "_h", nulls_last=True)
            .unique(["doc", "start"], keep="first", maintain_order=True)
            .with_columns((unit.hash(seed).cast(pl.Float64) / 2.0**64).alias("_u"))
        )
        if p.ratio is None:
            rows = rows.filter(pl.col("_u") < p.p)
        else:
            tokens = pl.col("text").str.count_matches(r"\w+")
            rows = (
                rows.sort("doc", "_u")
                .with_columns(pl.col("matched").str.count_matches(r"\w+").cum_sum().over("doc").alias("_cum"))
                .filter(pl.col("_cum") <= (tokens * p.ratio).floor())
                .sort("doc", "start")
            )
        return rows.select("doc", "start", "end", pl.col("target_lang").alias("lang"),
                           pl.col("matched").alias("source_term"), match_case(pl.col("target_term"), pl.col("matched"))
                           .alias("replacement"))

    @staticmethod
    def splice(docs: pl.DataFrame, chosen: pl.DataFrame) -> tuple[pl.Series, pl.Series, pl.Series]:
        """New texts with the chosen spans replaced, their output offsets and counts, per doc."""
        pieces = (
            chosen.join(docs.select("doc", "text"), on="doc").sort("doc", "start")
            .with_columns(pl.col("end").shift(1, fill_value=0).over("doc").alias("_prev"))
            .with_columns(pl.col("text").str.slice(pl.col("_prev"), pl.col("start") - pl.col("_prev")).alias("_gap"))
            .with_columns((pl.col("_gap").str.len_chars() + pl.col("replacement").str.len_chars()).cast(pl.Int64)
                          .alias("_len"))
            .with_columns((pl.col("_len").cum_sum().over("doc") - pl.col("_len")
                           + pl.col("_gap").str.len_chars()).alias("_out_start"))
        )
        per_doc = pieces.group_by("doc").agg(
            pl.concat_str("_gap", "replacement").str.join("").alias("_head"),
            pl.col("end").max().alias("_last"),
            pl.struct(start="_out_start", end=pl.col("_out_start") + pl.col("replacement").str.len_chars(),
                      lang="lang", source_term="source_term").alias("cs_spans"),
        )
        out = docs.join(per_doc, on="doc", how="left", maintain_order="left").select(
            pl.when(pl.col("_head").is_null()).then(pl.col("text"))
            .otherwise(pl.col("_head") + pl.col("text").str.slice(pl.col("_last"))).alias("text"),
            pl.col("cs_spans").fill_null(pl.lit([], dtype=pl.List(SPAN_TYPE))).cast(pl.List(SPAN_TYPE)),
        )
        return out["text"], out["cs_spans"], out["cs_spans"].list.len().cast(pl.UInt32).alias("cs_switches")


def match_case(target: pl.Expr, matched: pl.Expr) -> pl.Expr:
    """The translation in the case shape of the matched text: UPPER stays upper, Title gets a capital."""
    upper = (matched == matched.str.to_uppercase()) & (matched.str.count_matches(r"\p{L}") > 1)
    title = matched.str.contains(r"^\p{Lu}")
    capitalized = target.str.slice(0, 1).str.to_uppercase() + target.str.slice(1)
    return pl.when(upper).then(target.str.to_uppercase()).when(title).then(capitalized).otherwise(target)


def in_code(text: pl.Expr, start: pl.Expr, end: pl.Expr) -> pl.Expr:
    """Whether a match sits inside code, an option, path or identifier: glued to `-_/.$@=…` on
    either side, or between backticks."""
    before = text.str.slice(0, start)
    after = text.str.slice(end, 3)
    return (before.str.contains(CODE_BEFORE) | after.str.contains(CODE_AFTER)
            | (before.str.count_matches("`") % 2 == 1))


def previous_word(text: pl.Expr, start: pl.Expr) -> pl.Expr:
    """The lower-cased word just before a match (empty at the start of the text)."""
    return text.str.slice(0, start).str.extract(r"(\p{L}+)\W*$").str.to_lowercase().fill_null("")


def number_agrees(matched: pl.Expr, number: pl.Expr) -> pl.Expr:
    """Plural → plural: a translation marked `pl` only for a plural-looking term, one marked `sg` only
    for a singular-looking one (no mark: any)."""
    plural = matched.str.contains(r"(?i)[^su]s$|ies$|(?:ch|sh|x|ss)es$")
    return number.is_null() | ((number == "pl") == plural)
