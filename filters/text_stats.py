"""Vectorized text statistics shared by the heuristic filters: words, lines, paragraphs, duplicates, n-grams.

Every function returns a polars expression (or, for n-grams, a small table) computed for a whole
batch at once; nothing loops over documents in Python.

Words. datatrove splits English with spaCy's rule-based tokenizer (`spacy.blank("en")`; older
releases used NLTK's Treebank + Punkt). We use one regular expression, `WORD_PATTERN`, that follows
spaCy's rules: text splits on whitespace, marks at the start or end of a chunk are tokens of their
own ("(", "end", ".", ","), "..." is one token, a hyphen before a letter splits ("well", "-",
"known") but "UTF-8" stays, numbers keep inner "." "," ":" "/" ("3.14", "1,000", "12:30"), dotted
names and code stay whole ("setup.py", "x=1", "f(x"), URLs and host names stay whole
("https://x.org/a", "gnome-shell.desktop", "a@b.org"), acronyms, initials and common
abbreviations keep their period ("U.S.", "e.g.", "J.", "Mr.", and spaCy's "x."), a hyphen that ends
a word stays on it ("foo-", and groff's line-break hyphen "speci‐"), an apostrophe inside a word
joins it unless an English contraction follows ("l'utilisateur", "O'Reilly", but "it" + "'s"), a
contraction gives two tokens of the same total length ("didn" + "'t" where spaCy has "did" + "n't"),
and spaCy's exceptions "cannot" → "can" "not", "and/or", "C++", "''" and "):" are followed.
Known differences: spaCy's exception tables are larger (emoticons, "gonna", "y'all"), a domain
followed by a hyphenated word ("a-b.c-d") and some runs of marks ("sysctl.d/*.conf",
"--[no-]rev") are cut differently, and "1+2" / "10km" split in spaCy. On 12,000 real documents
that are not docstrings (man pages, changelogs, copyright files, licences, READMEs, junk; see
bench/real_text.py) Gopher quality agrees with datatrove on 99.6 % of documents and FineWeb on
99.99 % (bench/bench_heuristics.py).
"""

from __future__ import annotations

import functools
import re
from types import ModuleType

import numpy as np
import polars as pl

from datamill.curate.engine.utf8_buffer import utf8_buffer

PUNCTUATION = "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»" + "".join(
    chr(code) for low, high in ((0, 9), (11, 13), (13, 32), (127, 160)) for code in range(low, high)
)
"""datatrove's punctuation set: a token made only of these characters is a symbol, not a word."""

TERMINAL_PUNCTUATION = (
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964"
    "\u0965\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da"
    "\u1803\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e"
    "\u1c3b\u1c3c\u1c7e\u1c7f\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54\u3002"
    "\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e"
    "\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61\U00010a56\U00010a57"
    "\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87\U00010f88"
    "\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1\U00011141"
    "\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238"
    "\U00011239\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3"
    "\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0"
    "\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641"
    "\U00011642\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42\U00011a43"
    "\U00011a9b\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44"
    "\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U00016e98\U0001bc9f"
    "\U0001da88"
)
"""Sentence-final marks: datatrove's set (FineWeb's line ends), a superset of spaCy's sentencizer's."""

_ABBREVIATIONS = (
    "Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Mt|Messrs|vs|Inc|Ltd|Co|Corp|Bros|Gen|Gov|Rep|Sen|Rev|Adm|Capt|Col|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
)
_HYPHEN_DIGIT = r"\p{L}[-–—~]\d"
"""A hyphen between a letter and a digit stays inside the word: UTF-8, pre-1990 (not 2021-05)."""
_JOINER = (
    _HYPHEN_DIGIT
    + r"|\.[^\W\p{Lu}_]"  # a dot not before a capital: setup.py, 3.14 (but "end.Start" splits)
    r"|[:<>=/,]\d"  # a colon, slash, comma... before a digit: 12:30, 10/20, 1,000, x=1
    r"|[^\s\w'’.…\-–—~:<>=/,][^\s\w.…]*[^\W_]"  # other marks inside a word: f(x, a+b, f(-1
    r"|[-–—~:<>=/,'’][^\s\w.…\-]+[^\W_]"  # a run of marks: https://, align="center
    # an apostrophe before letters that are not an English contraction suffix ('s 're 've 'll 'd 'm
    # 't ending the word): French and Italian elisions (l'option, n'est, nell'editor), O'Reilly
    r"|['’](?:[^\W_srvldmtSRVLDMT]|[sdmtSDMT][^\W_]|[rvRV](?:[^\W_eE]|[eE][^\W_])|[lL](?:[^\W_lL]|[lL][^\W_]))"
)
"""Pieces that keep word characters together in one token, as spaCy's infix rules do; each ends
with a word character, so a token never ends in a mark or an underscore ("__init__" splits)."""
_WORD_START = r"\B(?:[-~/\\|^@]+|\.)"
"""Marks that are not spaCy prefixes, so they stay on the front of a word: -v, --flag, ~name, /usr,
\\n, |name, @user, .env."""
_DOMAIN = r"(?:[\w.+-]+@)?(?:[^\W_][\w-]*\.)+\p{Ll}{2,63}\b(?:[/?#]\S*[\w/])?"
"""spaCy's `url_match` without a scheme: host labels (hyphens allowed) and a lowercase top-level
name, an optional user@ and path: gnome-shell.desktop, x-y.service, www.foo.org/x, a@b.com."""
_HYPHEN_END = "\ue000\ue001"
"""Private-use stand-ins for "-" and "‐" (U+2010, groff's line-break hyphen) that end a word: spaCy
has no suffix rule for a hyphen, so "foo-" and "speci‐" stay one token (see `_prepared`)."""
WORD_PATTERN = (
    r"https?://\S*[\w/]"  # a URL, without trailing punctuation
    rf"|\b{_DOMAIN}(?:_*(?:{_JOINER}|[^\W_]))*"  # a host name, e-mail address or host/path
    r"|\band/or\b"  # spaCy exceptions: one token
    r"|C\+\+"
    r"|(?:\p{L}\.){2,}(?:\w+(?:\.\w+)*)?"  # acronyms (U.S., e.g., p.m.), dotted names (x.y.z)
    rf"|\b(?:{_ABBREVIATIONS})\."  # abbreviations keep their period
    r"|\b\p{Lu}\.\B"  # initials: J. R. R. Tolkien (not X.25)
    r"|\b[a-z]\.\B"  # spaCy's exceptions "a." … "z."
    rf"|(?:{_WORD_START})?(?:{_HYPHEN_DIGIT}|[^\W_])(?:_*(?:{_JOINER}|[^\W_]))*[{_HYPHEN_END}]?"  # words
    r"|(?i:['’](?:s|re|ve|ll|d|m|t)\b)"  # contraction suffixes: 's 're 'll n't→'t
    r"|\.{2,}|-{2,}|\^{2,}|~{2,}|\|{2,}|''|\):"  # an ellipsis, a dash, an underline, '' and "):"
    r"|_|[^\w\s]"  # any other mark is a token of its own
)
"""One token per match; see the module docstring for how it compares with datatrove's spaCy split."""

_NOT_PUNCTUATION = "[^" + "".join(re.escape(ch) for ch in PUNCTUATION) + "]"
_LINE_BREAKS = r"\r\n|[\r\v\f\x1c-\x1e\x85\u2028\u2029]"
"""What Python's `str.splitlines` also treats as a line end, besides "\n"."""


def _prepared(text: pl.Expr) -> pl.Expr:
    """`text` rewritten so that `WORD_PATTERN` cuts spaCy's tokens from it: a hyphen ending a word
    (before a character that is neither a word character nor a hyphen) becomes its `_HYPHEN_END`
    stand-in, and "cannot" is two words, as in spaCy's exceptions."""
    return (
        text.str.replace_all(r"([^\W_])-([^\w\-‐]|$)", "${1}\ue000${2}")
        .str.replace_all(r"([^\W_])‐([^\w\-‐]|$)", "${1}\ue001${2}")
        .str.replace_all(r"\b([Cc])annot\b", "${1}an not")
    )


def raw_words(text: pl.Expr) -> pl.Expr:
    """`words(text)` with a word-final hyphen still as its private-use stand-in (same length, and a
    letter always before it): what the filters count, without the cost of writing the hyphens back."""
    return _prepared(text).str.extract_all(WORD_PATTERN)


def restore_hyphens(tokens: pl.Expr) -> pl.Expr:
    """Tokens of `raw_words` (a String expression, one token per row) with their real hyphens."""
    return tokens.str.replace_all("\ue000", "-", literal=True).str.replace_all("\ue001", "‐", literal=True)


def words(text: pl.Expr) -> pl.Expr:
    """The tokens of `text` (words and punctuation marks), as list[str]."""
    return raw_words(text).list.eval(restore_hyphens(pl.element()))


def is_word(token: pl.Expr) -> pl.Expr:
    """datatrove's "non-symbol word": a token with at least one character outside `PUNCTUATION`."""
    return token.str.contains(_NOT_PUNCTUATION)


def has_letter(token: pl.Expr) -> pl.Expr:
    """Python's `any(c.isalpha() for c in token)`."""
    return token.str.contains(r"\p{L}")


def python_lines(text: pl.Expr) -> pl.Expr:
    """Python's `text.splitlines()` as list[str] (an empty text gives [""] instead of [])."""
    return text.str.replace_all(_LINE_BREAKS, "\n").str.strip_suffix("\n").str.split("\n")


def regex_split(text: pl.Expr, pattern: str) -> pl.Expr:
    """Python's `re.split(pattern, text)` as list[str]."""
    return text.str.split(pattern, literal=False)


def paragraphs(text: pl.Expr) -> pl.Expr:
    """Gopher's paragraphs: `re.split(r"\\n{2,}", text.strip())`."""
    return regex_split(text.str.strip_chars(), r"\n{2,}")


def chars_in(items: pl.Expr) -> pl.Expr:
    """Total number of characters of a list[str]."""
    return items.list.eval(pl.element().str.len_chars()).list.sum()


def duplicate_count(items: pl.Expr) -> pl.Expr:
    """How many elements of a list[str] repeat an earlier element."""
    return items.list.len() - items.list.n_unique()


def duplicate_chars(items: pl.Expr) -> pl.Expr:
    """Characters in elements that repeat an earlier element (each repeat counted in full)."""
    return chars_in(items) - chars_in(items.list.unique())


def count_where(items: pl.Expr, condition: pl.Expr) -> pl.Expr:
    """How many elements of a list satisfy `condition` (written on `pl.element()`)."""
    return items.list.eval(condition.cast(pl.UInt32)).list.sum()


def ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator as Float64, null where the denominator is 0."""
    denominator = denominator.cast(pl.Float64)
    return pl.when(denominator > 0).then(numerator.cast(pl.Float64) / denominator)


def token_count(text: pl.Expr) -> pl.Expr:
    """How many tokens `words(text)` would give, without building them."""
    return _prepared(text).str.count_matches(WORD_PATTERN)


_SENTENCE_END = (
    "(?:^|\\s)[" + "".join(re.escape(ch) for ch in TERMINAL_PUNCTUATION) + "]"
    r"(?:\s\p{P}+)*\s\S*[^\s\p{P}]"
)
"""On tokens joined by spaces: a terminal mark token, punctuation tokens, then a word token."""


def sentence_count(tokens: pl.Expr) -> pl.Expr:
    """Sentences in a token list, the way spaCy's sentencizer counts them.

    A sentence ends at a terminal mark ("." "!" "?"; an ellipsis token is not one) followed, after
    any further punctuation such as a closing quote, by a word; a non-empty text is one sentence.
    Tokens never contain whitespace, so joining them with spaces keeps their boundaries.
    """
    boundaries = tokens.list.join(" ").str.count_matches(_SENTENCE_END)
    return pl.when(tokens.list.len() > 0).then(boundaries + 1).otherwise(0)


_MIX = np.uint64(0x9E3779B97F4A7C15)
"""Odd 64-bit multiplier of the rolling n-gram hash (wraps around, as uint64 arithmetic does)."""


@functools.cache
def repetition_kernels() -> ModuleType:
    """`datamill.filters.repetition_kernels`, imported (and numba-compiled) on first use."""
    from datamill.filters import repetition_kernels as kernels

    return kernels


def ngram_char_counts(tokens: pl.Series, top_ns: list[int], dup_ns: list[int]) -> pl.DataFrame:
    """Gopher's n-gram repetition numerators for every document (row) of a list[str] Series.

    Returns one row per input row with columns `top_<n>` (characters of the most frequent n-gram,
    joined with spaces, times its count; ties go to the n-gram seen first, as `Counter.most_common`)
    and `dup_<n>` (characters, spaces excluded, of the n-grams that repeat an earlier n-gram).
    Documents with fewer than n tokens get 0.

    `dup_<n>` is datatrove's left-to-right scan exactly (`repetition_kernels.duplicate_chars`):
    n-grams keyed by their tokens joined without a separator, a repeat counted in full and the
    scan jumping n tokens past it, jumped n-grams never entering the visited set. The top n-grams
    are compared by a 64-bit rolling hash of their tokens (tokens hold no whitespace, so equal
    token tuples are equal space-joined strings).
    """
    n_docs = tokens.len()
    n_tok = tokens.list.len().cast(pl.Int64).to_numpy()
    flat = pl.select(restore_hyphens(pl.lit(tokens.explode(empty_as_null=False)))).to_series()
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), n_tok)
    pos = np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(n_tok) - n_tok, n_tok)
    remaining = n_tok[doc] - pos  # tokens from this one to the end of its document
    token_hash = flat.hash(seed=0).to_numpy()
    token_len = flat.str.len_chars().cast(pl.Int64).to_numpy()
    before = np.cumsum(token_len) - token_len  # characters before each token, batch-wide

    out = {}
    gram_hash = token_hash.copy()
    if dup_ns:
        kernels = repetition_kernels()
        concat_keys, concat_powers = kernels.token_hashes(*utf8_buffer(flat))
        token_keys, token_powers = concat_keys.copy(), concat_powers.copy()
    for n in range(1, max([*top_ns, *dup_ns], default=0) + 1):
        starts = len(flat) - n + 1
        if n > 1 and starts > 0:
            with np.errstate(over="ignore"):
                gram_hash[:starts] = gram_hash[:starts] * _MIX + token_hash[n - 1 :]
            if dup_ns:
                kernels.roll(concat_keys, concat_powers, token_keys, token_powers, n)
        if n not in top_ns and n not in dup_ns:
            continue
        rows = np.flatnonzero(remaining >= n)  # positions where an n-gram starts
        if n in top_ns:
            last = rows + n - 1
            gram_chars = before[last] + token_len[last] - before[rows]  # without the joining spaces
            out[f"top_{n}"] = _top_ngram_chars(doc[rows], gram_hash[rows], gram_chars + (n - 1), n_docs)
        if n in dup_ns:
            out[f"dup_{n}"] = pl.Series(
                kernels.duplicate_chars(concat_keys[rows], doc[rows], rows, n, before, token_len, n_docs)
            )
    return pl.DataFrame(out) if out else pl.DataFrame(height=n_docs)


def _top_ngram_chars(doc: np.ndarray, gram: np.ndarray, chars: np.ndarray, n_docs: int) -> pl.Series:
    """Per doc: characters of its most frequent n-gram times its count (earliest wins ties)."""
    grams = pl.DataFrame({"doc": doc, "g": gram, "chars": chars}).with_row_index("order")
    top = (
        grams.group_by("doc", "g")
        .agg(pl.len().alias("count"), pl.col("order").first(), pl.col("chars").first())
        .sort(["doc", "count", "order"], descending=[False, True, False])
        .unique(subset="doc", keep="first")
    )
    values = np.zeros(n_docs, dtype=np.int64)
    values[top["doc"].to_numpy()] = (top["count"].cast(pl.Int64) * top["chars"]).to_numpy()
    return pl.Series(values)
