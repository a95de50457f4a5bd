"""Real text that is not Python docstrings, gathered from the machine for the filter benchmarks.

Kinds (each document tagged with its kind):
- `man`: installed English man pages rendered with `man -l` (groff, UTF-8; man-db strips bold and
  underline when its output is a pipe), whole pages and their sections;
- `man_xx`: translated man pages (/usr/share/man/<lang>), whole and per section;
- `changelog`: Debian changelogs (/usr/share/doc/*/changelog.Debian.gz), per release entry and
  the first 20 entries as one text;
- `copyright`: Debian copyright files, whole and per paragraph;
- `license`: /usr/share/common-licenses, whole and per paragraph;
- `readme`: READMEs, NEWS, .md and .txt files under /usr/share/doc, whole and per paragraph;
- `junk_*`: synthetic low-quality text built from the real text (repeated lines and paragraphs,
  word lists, bullet lists, ellipsis lines, number tables, hashtags, shuffled words, repeated
  n-gram loops, boilerplate), the kinds the Gopher, C4 and FineWeb rules exist to catch.

Rendered man pages are cached under ~/.cache/datamill/bench_text (man-db and groff must be
installed: `apt-get install -y man-db groff` where they are missing; on a minimized Debian/Ubuntu
image also remove /etc/dpkg/dpkg.cfg.d/excludes and reinstall the packages whose pages you want).
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CACHE = Path.home() / ".cache" / "datamill" / "bench_text"
MAN_ROOT = Path("/usr/share/man")
DOC_ROOT = Path("/usr/share/doc")
LICENSES = Path("/usr/share/common-licenses")


def _read(path: Path, limit: int = 400_000) -> str:
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return data[:limit].decode("utf-8", errors="replace")
    except (OSError, EOFError, gzip.BadGzipFile):
        return ""


def _paragraphs(text: str, min_chars: int = 80) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if len(p.strip()) >= min_chars]


def render_man(path: Path) -> str:
    """One man page as plain UTF-8 text (cached)."""
    key = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    cached = CACHE / f"{key}.txt"
    if cached.exists():
        return cached.read_text(encoding="utf-8")
    try:
        result = subprocess.run(
            ["man", "-l", str(path)],
            capture_output=True,
            timeout=30,
            env={"MANWIDTH": "80", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "MAN_KEEP_FORMATTING": ""},
        )
        text = result.stdout.decode("utf-8", errors="replace")
    except (subprocess.TimeoutExpired, OSError):
        text = ""
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(text, encoding="utf-8")
    return text


def _man_sections(page: str) -> list[str]:
    """A rendered page's sections (a heading is a line starting with a capital at column 0)."""
    parts = re.split(r"\n(?=[A-Z][A-Z ]+\n)", page)
    return [p for p in parts if len(p) >= 200]


def man_pages(n_english: int, n_translated: int, seed: int) -> list[tuple[str, str]]:
    if shutil.which("man") is None:
        raise SystemExit("man is not installed: apt-get install -y man-db groff")
    rng = random.Random(seed)
    english = sorted(p for p in MAN_ROOT.glob("man[1-8]/*") if p.is_file())
    translated = sorted(
        p for lang in MAN_ROOT.iterdir() if not lang.name.startswith("man") for p in lang.rglob("*") if p.is_file()
    )
    chosen = [("man", p) for p in rng.sample(english, min(n_english, len(english)))]
    chosen += [
        (f"man_{p.relative_to(MAN_ROOT).parts[0]}", p)
        for p in rng.sample(translated, min(n_translated, len(translated)))
    ]
    with ThreadPoolExecutor(4) as pool:
        pages = list(pool.map(lambda item: render_man(item[1]), chosen))
    docs = []
    for (kind, _), page in zip(chosen, pages):
        if len(page.strip()) < 100:
            continue
        docs.append((kind, page))
        docs.extend((kind, section) for section in _man_sections(page))
    return docs


def changelogs(limit: int) -> list[tuple[str, str]]:
    docs = []
    for path in sorted(DOC_ROOT.glob("*/changelog.Debian.gz"))[:limit]:
        text = _read(path)
        entries = re.split(r"\n(?=\S[^\n]*\(\S+\)[^\n]*; urgency=)", text)
        docs.extend(("changelog", e.strip()) for e in entries if len(e.strip()) > 100)
        docs.append(("changelog", "\n".join(entries[:20])))
    return docs


def copyrights(limit: int) -> list[tuple[str, str]]:
    docs = []
    for path in sorted(DOC_ROOT.glob("*/copyright"))[:limit]:
        text = _read(path)
        docs.append(("copyright", text))
        docs.extend(("copyright", p) for p in _paragraphs(text))
    return docs


def licenses() -> list[tuple[str, str]]:
    docs = []
    for path in sorted(LICENSES.iterdir()):
        if path.is_file():
            text = _read(path)
            docs.append(("license", text))
            docs.extend(("license", p) for p in _paragraphs(text))
    return docs


def readmes(limit: int) -> list[tuple[str, str]]:
    patterns = ("README*", "NEWS*", "*.md", "*.md.gz", "*.txt", "*.txt.gz", "*.rst", "*.rst.gz")
    paths = sorted({p for pattern in patterns for p in DOC_ROOT.rglob(pattern) if p.is_file()})[:limit]
    docs = []
    for path in paths:
        text = _read(path, 200_000)
        if len(text.strip()) > 100:
            docs.append(("readme", text))
            docs.extend(("readme", p) for p in _paragraphs(text))
    return docs


def junk(real: list[str], count: int, seed: int) -> list[tuple[str, str]]:
    """Synthetic low-quality documents made from pieces of real text."""
    rng = random.Random(seed)
    lines = [line.strip() for text in real[:3000] for line in text.splitlines() if len(line.strip()) > 20]
    words = [w for line in lines[:20000] for w in line.split()]
    paras = [p for text in real[:2000] for p in _paragraphs(text)]

    def some_words(k: int) -> list[str]:
        return [rng.choice(words) for _ in range(k)]

    makers = {
        "junk_repeated_lines": lambda: "\n".join(rng.choices(rng.sample(lines, 5), k=40)),
        "junk_repeated_paragraph": lambda: "\n\n".join([rng.choice(paras)] * rng.randint(2, 5) + rng.sample(paras, 2)),
        "junk_word_list": lambda: "\n".join(some_words(rng.randint(30, 200))),
        "junk_bullets": lambda: "\n".join(f"- {' '.join(some_words(rng.randint(2, 8)))}" for _ in range(30)),
        "junk_ellipsis": lambda: "\n".join(f"{' '.join(some_words(rng.randint(3, 10)))}..." for _ in range(25)),
        "junk_numbers": lambda: "\n".join(
            " ".join(str(rng.randint(0, 10**rng.randint(1, 6))) for _ in range(8)) for _ in range(30)
        ),
        "junk_hashtags": lambda: " ".join(f"#{w}" if rng.random() < 0.3 else w for w in some_words(150)),
        "junk_shuffled": lambda: " ".join(some_words(rng.randint(50, 400))),
        "junk_ngram_loop": lambda: " ".join(some_words(rng.randint(5, 12)) * rng.randint(3, 20)),
        "junk_near_loop": lambda: " ".join(
            w for _ in range(rng.randint(5, 15)) for w in some_words(2) + some_words(1) * 3 + ["the", "of"]
        ),
        "junk_short": lambda: " ".join(some_words(rng.randint(3, 40))),
        "junk_boilerplate": lambda: "\n".join(
            rng.choice(
                ["Click here to subscribe.", "All rights reserved.", "Cookie policy", "Terms of use",
                 "Privacy policy", "Log in", "Sign up", "Share this page", "Lorem ipsum dolor sit amet."]
            )
            for _ in range(rng.randint(10, 40))
        ),
        "junk_code_braces": lambda: "\n".join("{ " + " ".join(some_words(5)) + " }" for _ in range(20)),
        "junk_mixed_repeat": lambda: rng.choice(paras) + "\n" + "\n".join([rng.choice(lines)] * rng.randint(2, 8)),
        "junk_long_words": lambda: " ".join("".join(some_words(3)) for _ in range(80)),
        "junk_hyphenated": lambda: " ".join(w + "-" if rng.random() < 0.2 else w for w in some_words(120)),
        "junk_half_lines": lambda: "\n".join(" ".join(some_words(rng.randint(1, 4))) for _ in range(60)),
    }
    kinds = list(makers)
    return [(kind, makers[kind]()) for kind in (kinds[i % len(kinds)] for i in range(count))]


SHARES = {"man": 0.35, "changelog": 0.17, "copyright": 0.15, "license": 0.03, "readme": 0.22}
"""Share of the real documents taken from each kind (translated man pages count as `man`)."""


def corpus(n_docs: int, seed: int = 0, *, junk_share: float = 0.08) -> list[tuple[str, str]]:
    """A seeded sample of n_docs distinct (kind, text) pairs: real text in `SHARES`, then junk."""
    real = man_pages(1500, 600, seed) + changelogs(400) + copyrights(500) + licenses() + readmes(400)
    seen: dict[str, str] = {}
    for kind, text in real:
        if text.strip():
            seen.setdefault(text, kind)
    rng = random.Random(seed)
    by_family: dict[str, list[tuple[str, str]]] = {}
    for text, kind in seen.items():
        by_family.setdefault(kind.split("_")[0], []).append((kind, text))
    n_real = n_docs - int(n_docs * junk_share)
    docs = []
    for family, share in SHARES.items():
        pool = by_family.get(family, [])
        docs += rng.sample(pool, min(len(pool), round(n_real * share)))
    taken = set(docs)
    rest = [item for family in SHARES for item in by_family.get(family, []) if item not in taken]
    docs += rng.sample(rest, max(0, min(len(rest), n_real - len(docs))))
    docs += junk([t for _, t in docs], n_docs - len(docs), seed)
    rng.shuffle(docs)
    return docs


if __name__ == "__main__":
    from collections import Counter

    docs = corpus(12_000)
    print(len(docs), sum(len(t) for _, t in docs), Counter(k for k, _ in docs).most_common())
