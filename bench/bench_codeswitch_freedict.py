"""Lexicon code-switching with Debian's FreeDict dictionaries on real English sentences.

Needs `apt-get install -y dict-freedict-eng-deu dict-freedict-eng-spa` (dictd files in
/usr/share/dictd). Sentences: licences (/usr/share/common-licenses) and rendered man pages
(bench/real_text.py), split into sentences of 6–40 words, deduplicated, a seeded sample.

For each language pair:
- the dictionary as read by the previous reader (datamill before issue #20, from git) and by the
  current one: rows, and the share of rows that are dictionary junk (annotations read as
  translations: `{…}`, `Note:`, `see:`, `Synonym`, `[…]`, quotes, examples);
- `codeswitch_lexicon` with p = 1 (every eligible match switched; eng-spa, which has no parts of
  speech, borrows eng-deu's English tags through `pos_from`, and is also run without them): spans per sentence, the share of
  switched spans whose translation is junk (target 0), and `--sample` spans printed with their
  sentence for hand checking;
- with p = 0.5, the exact CMI (from cs_spans) against `codeswitch_verify`'s word-level LID
  estimate (cs_ratio_lid): Pearson correlation.

    python bench/bench_codeswitch_freedict.py --sentences 600 --sample 50 [--out spans.tsv]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

DICTD = Path("/usr/share/dictd")
PAIRS = {"de": "freedict-eng-deu", "es": "freedict-eng-spa"}
JUNK = r"[{}\[\]\"]|\b(?:Note|see|Synonyms?)\b\s*:?|^\s*$"


def sentences(n: int, seed: int) -> list[str]:
    from real_text import licenses, man_pages

    texts = [t for _, t in licenses()] + [t for _, t in man_pages(40, 0, seed)]
    found = []
    for text in texts:
        flat = re.sub(r"\s+", " ", text)
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat):
            words = sentence.split()
            if 6 <= len(words) <= 40 and sentence[-1:] in ".!?" and sum(w.isalpha() for w in words) > len(words) / 2:
                found.append(sentence.strip())
    unique = list(dict.fromkeys(found))
    random.Random(seed).shuffle(unique)
    return unique[:n]


def old_reader():
    """`read_dictd` as it was before issue #20 (from git), for the junk comparison."""
    source = subprocess.run(["git", "show", "2dbeb71:synth/codeswitch/dictd.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "old_dictd.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_dictd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_dictd


def junk_share(terms: pl.Series) -> float:
    return float(terms.str.contains(JUNK).mean()) if len(terms) else 0.0


def dictionary(lang: str) -> dict:
    return {"path": str(DICTD / f"{PAIRS[lang]}.index"), "source_lang": "en", "target_lang": lang}


def switch(lang: str, frame: pl.DataFrame, p: float, borrow: bool = True):
    """`codeswitch_lexicon` with one FreeDict dictionary; an untagged one (eng-spa) borrows the English
    parts of speech of eng-deu unless `borrow` is false."""
    from datamill.synth.codeswitch.switch import LexiconSwitch, SwitchParams

    pos_from = [dictionary(other) for other in PAIRS if other != lang] if borrow else []
    stage = LexiconSwitch(SwitchParams(lexicons=[dictionary(lang)], pos_from=pos_from, target_langs=[lang], p=p),
                          seed=1)
    stage.setup()
    return stage.process(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=600)
    parser.add_argument("--sample", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Write the sampled spans here (TSV) for hand checking.")
    args = parser.parse_args()
    from datamill.synth.codeswitch.dictd import parse_dictd
    from datamill.synth.codeswitch.verify import CodeSwitchVerify, VerifyParams

    texts = sentences(args.sentences, args.seed)
    frame = pl.DataFrame({"id": [f"s{i}" for i in range(len(texts))], "text": texts})
    print(f"{len(texts)} sentences (licences and man pages), machine: 2-core shared box")
    read_old = old_reader()
    samples = []
    for lang, name in PAIRS.items():
        index = DICTD / f"{name}.index"
        try:
            old = read_old(index, "en", lang)
            old_rows, old_junk = old.height, junk_share(old["target_term"])
        except ValueError as error:  # the old reader fails on eng-deu's empty headwords
            old_rows, old_junk = 0, float("nan")
            print(f"[{lang}] previous reader failed: {str(error)[:120]}")
        started = time.perf_counter()
        rows, counts = parse_dictd(index, "en", lang)
        seconds = time.perf_counter() - started
        print(f"[{lang}] previous reader: {old_rows:,} rows, {old_junk:.1%} junk | current: {rows.height:,} rows, "
              f"{junk_share(rows['target_term']):.2%} junk, read in {seconds:.1f} s; skipped {counts}")
        if lang == "es":  # untagged: before borrowing eng-deu's English parts of speech
            alone = switch(lang, frame, 1.0, borrow=False)
            print(f"[{lang}] p=1 without borrowed parts of speech: {alone['cs_switches'].sum() / len(texts):.2f} "
                  "spans per sentence")
        out = switch(lang, frame, 1.0)
        spans = out.select("id", "text", "cs_spans").explode("cs_spans").drop_nulls("cs_spans").unnest("cs_spans")
        spans = spans.with_columns(pl.col("text").str.slice(pl.col("start"), pl.col("end") - pl.col("start"))
                                   .alias("replacement"))
        print(f"[{lang}] p=1: {spans.height / len(texts):.2f} spans per sentence, "
              f"{(out['cs_switches'] > 0).mean():.0%} of sentences switched, "
              f"junk translations among switched spans: {junk_share(spans['replacement']):.2%}")
        picked = spans.sample(min(args.sample, spans.height), seed=args.seed)
        for row in picked.iter_rows(named=True):
            samples.append((lang, row["source_term"], row["replacement"], row["text"]))
        half = switch(lang, frame, 0.5)
        verify = CodeSwitchVerify(VerifyParams(langs=["en", lang], min_cs_ratio=0.0, min_switch_points=0))
        verify.setup()
        scored = verify.score(half)
        r = np.corrcoef(scored["cs_ratio"].to_numpy(), scored["cs_ratio_lid"].to_numpy())[0, 1]
        print(f"[{lang}] p=0.5: mean exact CMI {scored['cs_cmi'].mean():.1f}, mean LID-estimated CMI "
              f"{100 * scored['cs_ratio_lid'].mean():.1f}, Pearson r(exact, LID) = {r:.2f}")
    lines = [f"{lang}\t{src}\t{dst}\t{text}" for lang, src, dst, text in samples]
    if args.out:
        args.out.write_text("lang\tsource\treplacement\tsentence\n" + "\n".join(lines) + "\n", encoding="utf-8")
        print(f"{len(lines)} sampled spans written to {args.out}")
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
