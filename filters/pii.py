"""The `pii` stage: find e-mail addresses, phone numbers, IP addresses (and optionally card numbers
and IBANs) and mask them, flag the rows, or drop them — vectorized over the batch with polars.

Patterns. E-mail: datatrove's `PIIFormatter` expression (an RFC 5322-style local part, a dotted
domain), so `user@localhost` is not an address; the domain must end in a letter label that is not
a file extension (`icon@2x.png`, `lodash@4.17.21` are not addresses). IPv4: the expression
datatrove and Dolma (`pii_regex_*` taggers, Soldni et al.) share, and like datatrove's default only
public addresses are masked (`only_public_ips`). IPv6: full and `::`-compressed forms with at
least three groups. Phone: Dolma's North-American pattern (`(555) 123-4567`, `555.123.4567`,
with an optional `+1`) plus international numbers written with a leading `+`, 10 to 15 digits, and
Dolma's rule that `isbn` / `doi` just before a number means it is not a phone number.
Card numbers: 13–19 digits, in groups or not, passing the Luhn check. IBAN: two letters, two check
digits and up to 30 letters/digits (spaces every four allowed) with a valid ISO 13616 mod-97 check.

Every candidate must stand alone: an IPv4 address inside a longer dotted number (`1.2.3.4.5`),
after `v`/`version` (`version 10.0.0.1`), or a number glued to letters or other digits is not a
match. Dotted dates (`12.03.2024`), ISO dates and ranges (`2024-01-15`, `1990-2000`), times
(`12:30:45`) and C++ scopes (`std::vector`) never match. In code, decorators (`@property`),
handles (`@nasa`) and package pins (`react@18.2.0`) are left alone, but an SSH remote such as
`git@github.com:me/repo` is masked: it is an address by its form.

How: every candidate of every type is wrapped in a sentinel character by one regex replace, each
text is split on the sentinel into (text, candidate, text, …) segments, and the segments of the
batch are checked as one polars frame, where the neighbouring segments give the context. Masked
segments are joined back per row. Columns `pii_<type>` count the matches per row.
`action: mask` (default) replaces each match by its replacement (Dolma's `|||EMAIL_ADDRESS|||`
style by default); `flag` writes `pii_reason` (`pii:<first type found>`) and keeps the text;
`drop` drops rows with any match under that reason.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator

from datamill.curate.engine.registry import register_stage
from datamill.curate.engine.stage import DROP_REASON, Stage, StageParams

PiiType = Literal["email", "phone", "ipv4", "ipv6", "credit_card", "iban"]

EMAIL = (
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:(?:[A-Za-z0-9](?:["
    r"A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?|\[(?:(?:25[0-5]|2[0-4][0-9]|["
    r"01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|[A-Za-z0-9-]*[A-Za-z0-9]:)])"
)
"""datatrove's PIIFormatter e-mail expression (also the usual RFC 5322 practical form)."""
IPV4 = r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
"""The IPv4 expression of datatrove's PIIFormatter and Dolma's PII taggers."""
_H = r"[0-9A-Fa-f]{1,4}"
IPV6 = "|".join([
    rf"(?:{_H}:){{7}}{_H}",
    rf"{_H}:(?::{_H}){{1,6}}",
    rf"(?:{_H}:){{1,2}}(?::{_H}){{1,5}}",
    rf"(?:{_H}:){{1,3}}(?::{_H}){{1,4}}",
    rf"(?:{_H}:){{1,4}}(?::{_H}){{1,3}}",
    rf"(?:{_H}:){{1,5}}(?::{_H}){{1,2}}",
    rf"(?:{_H}:){{1,6}}:{_H}",
    rf"(?:{_H}:){{1,7}}:",
])
"""Full and `::`-compressed forms; the forms with more groups after `::` come first because the
regex engine takes the first alternative that matches, not the longest."""
PHONE = r"\+\d{1,3}(?:[-. ]?(?:\(\d{1,4}\)|\d{1,5})){2,5}|(?:\+?1[-. ]?)?(?:\(\d{3}\)|\d{3})[-. ]*\d{3}[-. ]?\d{4}"
"""International numbers with a leading `+`, or Dolma's `\\(?(\\d{3})\\)?[-\\. ]*(\\d{3})[-. ]?(\\d{4})`."""
CREDIT_CARD = r"\d{4}(?:[- ]?\d{4}){2}[- ]?\d{1,7}|\d{4}[- ]?\d{6}[- ]?\d{4,5}"
IBAN = r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"

PATTERNS: dict[str, str] = {"email": EMAIL, "ipv6": IPV6, "ipv4": IPV4, "iban": IBAN, "credit_card": CREDIT_CARD,
                            "phone": PHONE}
"""Candidates of all enabled types are found by one alternation, in this order."""
DEFAULT_TYPES = ["email", "phone", "ipv4", "ipv6"]
DEFAULT_REPLACEMENTS = {
    "email": "|||EMAIL_ADDRESS|||", "phone": "|||PHONE_NUMBER|||", "ipv4": "|||IP_ADDRESS|||",
    "ipv6": "|||IP_ADDRESS|||", "credit_card": "|||CREDIT_CARD|||", "iban": "|||IBAN|||",
}
FILE_EXTENSIONS = ("png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "js", "mjs", "ts", "css", "py",
                   "json", "html", "htm", "txt", "md", "pdf", "zip", "gz")
NON_PUBLIC_IPV4 = (
    r"^(?:0\.|10\.|127\.|169\.254\.|172\.(?:1[6-9]|2\d|3[01])\.|192\.168\.|192\.0\.[02]\.|198\.1[89]\.|"
    r"198\.51\.100\.|203\.0\.113\.|100\.(?:6[4-9]|[7-9]\d|1[01]\d|12[0-7])\.|2(?:2[4-9]|[3-5]\d)\.)"
)
"""Private, loopback, link-local, shared, documentation, benchmarking, multicast and reserved
ranges: the addresses `ipaddress.ip_address(x).is_global` rejects."""
NON_PUBLIC_IPV6 = r"(?i)^(?::|f[cd]|fe[89ab]|ff|2001:0*db8:)"
NUMBERING_WORDS = (r"(?i)(?:\bversion|\bver\.?|\bv|\brelease|\brev\.?|\bbuild|\barticle|\bart\.|\bsection|"
                   r"\bsec\.|\bchapter|\bch\.|\bclause|\brule|\bstep|\boid|§)\s*$")
"""Words after which a dotted number is a version or a section number, not an IPv4 address."""
PHONE_WORDS = r"(?i)\b(?:call|phone|tel|telephone|fax|mobile|cell|dial|ring|text|sms|whatsapp|contact|hotline)\b"
"""An undivided run of 10+ digits is a phone number only after one of these words."""
CONTEXT_CHARS = 32
"""Characters of text on each side of a candidate that its checks look at."""
SENTINELS = ("\x00", "\x01", "\x02", "\ufdd0", "\ufdd1")
_IDX, _SEG, _POS = "_pii_row", "_pii_seg", "_pii_pos"


class PiiParams(StageParams):
    action: Literal["mask", "flag", "drop"] = Field(
        "mask", description="mask: replace each match; flag: keep the text, write `pii_reason`; drop: drop rows "
        "with any match."
    )
    types: list[PiiType] = Field(
        default_factory=lambda: list(DEFAULT_TYPES),
        description="What to find: email, phone, ipv4, ipv6, credit_card (Luhn-checked), iban (mod-97-checked).",
    )
    replacements: dict[PiiType, str] = Field(
        default_factory=dict, description="Replacement string per type (default `|||EMAIL_ADDRESS|||` style)."
    )
    only_public_ips: bool = Field(True, description="Leave private, loopback and documentation IPs (datatrove's default).")

    @field_validator("types")
    @classmethod
    def _some_types(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one type")
        return list(dict.fromkeys(value))


@register_stage
class Pii(Stage):
    """Masks (or flags, or drops) e-mail addresses, phone numbers and IP addresses in `text`."""

    type_name: ClassVar[str] = "pii"
    Params: ClassVar[type[PiiParams]] = PiiParams
    params: PiiParams

    def __init__(self, params: PiiParams | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        types = [t for t in PATTERNS if t in self.params.types]
        self.types = types
        self.columns = [f"pii_{t}" for t in types]
        self.outputs = (("text",) if self.params.action == "mask" else ()) + tuple(self.columns)
        self.pattern = "|".join(f"(?:{PATTERNS[t]})" for t in types)
        self.replacement = {**DEFAULT_REPLACEMENTS, **self.params.replacements}

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        found = find_pii(batch["text"], self.types, self.pattern, self.params.only_public_ips, self.replacement)
        counts = found.counts
        out = batch.with_columns(counts)
        if self.params.action == "mask":
            return out.with_columns(found.masked.alias("text"))
        any_type = pl.lit(None, dtype=pl.String)
        for t in reversed(self.types):
            any_type = pl.when(pl.col(f"pii_{t}") > 0).then(pl.lit(f"pii:{t}")).otherwise(any_type)
        return out.with_columns(any_type.alias(DROP_REASON))

    @property
    def modifies_text(self) -> bool:
        return self.params.action == "mask"

    def tallies(self, result: pl.DataFrame) -> dict[str, int]:
        """Matches per type in the batch (`pii_email: 12`…), added up in the report."""
        if not result.height:
            return {}
        sums = result.select(pl.col(self.columns).sum()).row(0, named=True)
        return {name: int(n) for name, n in sums.items() if n}


class Found:
    """What `find_pii` returns: the masked text and the per-type counts, aligned with the input."""

    def __init__(self, masked: pl.Series, counts: list[pl.Series]):
        self.masked, self.counts = masked, counts


def find_pii(texts: pl.Series, types: list[str], pattern: str, only_public_ips: bool,
             replacement: dict[str, str]) -> Found:
    """Find and mask PII in `texts`; see the module docstring for the rules."""
    n = texts.len()
    frame = pl.DataFrame({"text": texts}).with_row_index(_IDX)
    sentinel = next((s for s in SENTINELS if not frame["text"].str.contains(s, literal=True).any()), None)
    if sentinel is None:
        raise ValueError("every candidate sentinel character occurs in the batch's text")
    hits = frame.filter(pl.col("text").str.contains(pattern))
    zero = [pl.Series(f"pii_{t}", [0] * n, dtype=pl.UInt32) for t in types]
    if hits.height == 0:
        return Found(texts, zero)

    segments = (
        hits.select(_IDX, pl.col("text").str.replace_all(pattern, f"{sentinel}${{0}}{sentinel}")
                    .str.split(sentinel).alias(_SEG))
        .explode(_SEG)
        .with_columns(pl.int_range(pl.len()).over(_IDX).alias(_POS))
    )
    seg = pl.col(_SEG)
    # context: the end of the text before a candidate and the start of the text after it
    segments = segments.with_columns(
        seg.str.slice(-CONTEXT_CHARS).shift(1).over(_IDX).fill_null("").alias("_prev"),
        seg.str.slice(0, CONTEXT_CHARS).shift(-1).over(_IDX).fill_null("").alias("_next"),
    )
    candidates = segments.filter((pl.col(_POS) % 2) == 1)
    kind = pl.lit(None, dtype=pl.String)
    for t in reversed(types):
        kind = pl.when(seg.str.contains(f"^(?:{PATTERNS[t]})$")).then(pl.lit(t)).otherwise(kind)
    candidates = candidates.with_columns(kind.alias("_kind"))
    valid = _valid(pl.col("_kind"), seg, pl.col("_prev"), pl.col("_next"), only_public_ips)
    found = candidates.filter(valid).select(_IDX, _POS, pl.col("_kind").alias("_type"))
    segments = segments.join(found, on=[_IDX, _POS], how="left", maintain_order="left")

    masked_seg = seg
    for t in types:
        masked_seg = pl.when(pl.col("_type") == t).then(pl.lit(replacement[t])).otherwise(masked_seg)
    per_row = segments.group_by(_IDX, maintain_order=True).agg(
        masked_seg.str.join("").alias("_masked"),
        *[(pl.col("_type") == t).sum().cast(pl.UInt32).alias(f"pii_{t}") for t in types],
    )
    joined = frame.join(per_row, on=_IDX, how="left", maintain_order="left")
    masked = joined.select(pl.coalesce("_masked", "text").alias(texts.name)).to_series()
    counts = [joined[f"pii_{t}"].fill_null(0).alias(f"pii_{t}") for t in types]
    return Found(masked, counts)


def _valid(kind: pl.Expr, seg: pl.Expr, prev: pl.Expr, nxt: pl.Expr, only_public_ips: bool) -> pl.Expr:
    """Whether a candidate of `kind` is a real match, given the text just before and after it."""
    last, first = prev.str.slice(-1), nxt.str.slice(0, 1)
    glued_before = last.str.contains(r"^[\w]$")
    digits = seg.str.replace_all(r"\D", "")
    n_digits = digits.str.len_chars()

    tld = seg.str.extract(r"\.([A-Za-z0-9-]+)$").str.to_lowercase()
    email_ok = tld.str.contains(r"^[a-z][a-z0-9-]*[a-z0-9]$") & ~tld.is_in(FILE_EXTENSIONS)

    ipv4_ok = (~last.str.contains(r"^[\w.]$") & ~nxt.str.contains(r"^(?:\w|\.\d)")
               & ~prev.str.contains(NUMBERING_WORDS))
    if only_public_ips:
        ipv4_ok &= ~seg.str.contains(NON_PUBLIC_IPV4) & (seg != "255.255.255.255")

    groups = seg.str.count_matches(r"[0-9A-Fa-f]+")
    ipv6_ok = ~last.str.contains(r"^[\w:]$") & ~first.str.contains(r"^[\w:]$") & (groups >= 3)
    if only_public_ips:
        ipv6_ok &= ~seg.str.contains(NON_PUBLIC_IPV6)

    international = seg.str.starts_with("+")
    unformatted = seg.str.contains(r"^\d+$")
    phone_ok = (~last.str.contains(r"^[\w+./#-]$") & ~nxt.str.contains(r"^(?:\w|[-./]\d)")
                & n_digits.is_between(10, 15).or_(international & n_digits.is_between(8, 15))
                & ~prev.str.slice(-24).str.to_lowercase().str.contains(r"isbn|doi")
                & (~unformatted | prev.str.slice(-30).str.contains(PHONE_WORDS)))

    card_ok = ~glued_before & ~nxt.str.contains(r"^(?:\w|[- ]\d)") & n_digits.is_between(13, 19) & _luhn(digits)

    iban_text = seg.str.replace_all(" ", "")
    iban_ok = (~nxt.str.contains(r"^\w") & iban_text.str.len_chars().is_between(15, 34) & _mod97(iban_text))

    return (pl.when(kind == "email").then(email_ok)
            .when(kind == "ipv4").then(ipv4_ok)
            .when(kind == "ipv6").then(ipv6_ok)
            .when(kind == "phone").then(phone_ok)
            .when(kind == "credit_card").then(card_ok)
            .when(kind == "iban").then(iban_ok)
            .otherwise(False)).fill_null(False)


def _luhn(digits: pl.Expr) -> pl.Expr:
    """The Luhn checksum holds: from the right, every second digit doubled (minus 9 past 9)."""
    values = digits.str.reverse().str.split("").list.eval(pl.element().cast(pl.Int32, strict=False))
    weighted = values.list.eval(
        pl.when(pl.int_range(pl.len()) % 2 == 1)
        .then(pl.element() * 2 - pl.when(pl.element() * 2 > 9).then(9).otherwise(0))
        .otherwise(pl.element())
    )
    return (weighted.list.sum() % 10 == 0) & (digits.str.len_chars() > 0)


_POWERS_97 = {k: pow(10, k, 97) for k in range(80)}
_LETTER_DIGITS = {chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)}


def _mod97(iban: pl.Expr) -> pl.Expr:
    """ISO 13616: the first four characters moved to the end, letters as 10–35, mod 97 == 1."""
    moved = pl.concat_str(iban.str.slice(4), iban.str.slice(0, 4)).str.to_uppercase()
    numeric = moved.str.replace_many(_LETTER_DIGITS)
    values = numeric.str.reverse().str.split("").list.eval(pl.element().cast(pl.Int64, strict=False))
    weighted = values.list.eval(
        pl.element() * pl.int_range(pl.len()).replace_strict(_POWERS_97, default=0, return_dtype=pl.Int64)
    )
    return weighted.list.sum() % 97 == 1
