"""Benchmark: the `pii` stage vs datatrove's PIIFormatter — precision/recall on the hand-labelled set and
speed on real text.

Quality: the hand-labelled snippets of tests/pii_cases.py (development set the rules were tuned
on, and a held-out set written after they were frozen). datamill is scored on every type it finds;
datatrove's PIIFormatter (e-mails and public IPv4 only) is scored on those two types, and datamill
again on the same two types for a like-for-like line.

Speed: real text with real addresses — Debian changelog entries and copyright files (maintainer
e-mails everywhere), READMEs and NEWS files under /usr/share/doc — masked by both, documents/s,
best of `--repeat`; and how often the two agree on the masked e-mail/IPv4 spans.

    python bench/bench_pii.py --docs 20000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl

from datamill.filters.pii import Pii, PiiParams

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import real_text  # noqa: E402
from pii_cases import HELD_OUT, SNIPPETS, cases, masked_values  # noqa: E402

ALL = ["email", "phone", "ipv4", "ipv6", "credit_card", "iban"]


def score(labelled, masked_texts, replacement, types) -> tuple[float, float, int]:
    tp = fp = fn = 0
    for (text, labels), masked in zip(labelled, masked_texts):
        got = Counter(v for v in masked_values(text, masked, replacement) if v[0] in types)
        expected = Counter(v for v in labels if v[0] in types)
        tp += sum((got & expected).values())
        fp += sum((got - expected).values())
        fn += sum((expected - got).values())
    return tp / max(1, tp + fp), tp / max(1, tp + fn), tp + fn


def datamill_mask(texts: list[str], types: list[str], replacement: dict[str, str] | None = None) -> list[str]:
    stage = Pii(PiiParams(types=types, replacements=replacement or {}))
    out = []
    for start in range(0, len(texts), 1000):
        out += stage.process(pl.DataFrame({"text": texts[start:start + 1000]}))["text"].to_list()
    return out


def datatrove_mask(texts: list[str], email: str = "email@example.com", ip: str = "22.214.171.124") -> list[str]:
    from datatrove.pipeline.formatters import PIIFormatter

    formatter = PIIFormatter(email_replacement=email, ip_replacement=ip)
    return [formatter.format(t) for t in texts]


def quality() -> None:
    replacement = {t: f"<<{t}>>" for t in ALL}
    print("precision / recall on the hand-labelled set (spans):")
    print("| set | snippets | system | types | spans | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    for name, block in (("development", SNIPPETS), ("held-out", HELD_OUT)):
        labelled = cases(block)
        texts = [t for t, _ in labelled]
        ours_all = datamill_mask(texts, ALL, replacement)
        p, r, n = score(labelled, ours_all, replacement, set(ALL))
        print(f"| {name} | {len(texts)} | datamill | all six | {n} | {p:.3f} | {r:.3f} |")
        ours = datamill_mask(texts, ["email", "ipv4"], replacement)
        p, r, n = score(labelled, ours, replacement, {"email", "ipv4"})
        print(f"| {name} | {len(texts)} | datamill | email, ipv4 | {n} | {p:.3f} | {r:.3f} |")
        theirs = datatrove_mask(texts, replacement["email"], replacement["ipv4"])
        p, r, n = score(labelled, theirs, replacement, {"email", "ipv4"})
        print(f"| {name} | {len(texts)} | datatrove PIIFormatter | email, ipv4 | {n} | {p:.3f} | {r:.3f} |")


def speed(n_docs: int, repeat: int) -> None:
    docs = [t for _, t in real_text.changelogs(400) + real_text.copyrights(500) + real_text.readmes(300)]
    docs = (docs * (n_docs // max(1, len(docs)) + 1))[:n_docs]
    chars = sum(map(len, docs))
    print(f"\nspeed on {len(docs)} real documents ({chars / 1e6:.1f} M characters: Debian changelogs, copyright "
          "files, READMEs):")
    replacement = {"email": "email@example.com", "ipv4": "22.214.171.124"}

    def best(run):
        times, out = [], None
        for _ in range(repeat):
            start = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - start)
        return min(times), out

    dt_s, theirs = best(lambda: datatrove_mask(docs))
    ours_s, ours = best(lambda: datamill_mask(docs, ["email", "ipv4"], replacement))
    default_s, _ = best(lambda: datamill_mask(docs, ["email", "phone", "ipv4", "ipv6"]))
    all_s, _ = best(lambda: datamill_mask(docs, ALL))
    same = sum(a == b for a, b in zip(ours, theirs))
    changed = sum(a != d for a, d in zip(theirs, docs))
    print(f"  datatrove PIIFormatter (email, ipv4):   {len(docs) / dt_s:9.0f} docs/s")
    print(f"  datamill pii (email, ipv4):             {len(docs) / ours_s:9.0f} docs/s   x{dt_s / ours_s:.2f}")
    print(f"  datamill pii (default: email, phone, ipv4, ipv6): {len(docs) / default_s:9.0f} docs/s   "
          f"x{dt_s / default_s:.2f}")
    print(f"  datamill pii (all six types):           {len(docs) / all_s:9.0f} docs/s   x{dt_s / all_s:.2f}")
    print(f"  same masked text as datatrove: {same / len(docs):.2%} of documents "
          f"({changed} documents changed by datatrove)")
    diffs = [(d, a, b) for d, a, b in zip(docs, ours, theirs) if a != b][:3]
    for doc, a, b in diffs:
        import difflib

        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
            if op != "equal":
                print(f"    e.g. datamill {a[max(0, i1 - 30):i2 + 10]!r}\n         datatrove {b[max(0, j1 - 30):j2 + 10]!r}")
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    quality()
    speed(args.docs, args.repeat)


if __name__ == "__main__":
    main()
