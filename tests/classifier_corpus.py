"""Real text for the classifier tests: stdlib docstrings, their word-shuffled copies, and web boilerplate."""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path

BOILERPLATE = [
    "Home | About us | Contact | Privacy policy | Terms of use | Sitemap",
    "We use cookies to improve your experience. By continuing to browse you accept our cookie policy.",
    "Copyright © {year} {company}. All rights reserved.",
    "Click here to subscribe to our newsletter and get {n}% off your first order!",
    "Share on Facebook Share on Twitter Share on LinkedIn Email this page",
    "Log in | Register | Forgot your password? | My account | Cart ({n})",
    "Related posts: Top {n} tips | Best deals of {year} | Read more >>",
    "Posted by admin on {month} {n}, {year} in Uncategorized | {n} comments",
    "Skip to main content. Menu. Search this site. Follow us on Instagram.",
    "Buy now! Limited offer, only {n} left in stock. Free shipping on orders over ${n}.",
]
MONTHS = ["January", "March", "May", "July", "September", "November"]
COMPANIES = ["Acme Corp", "Example Ltd", "WebShop Inc", "Blog Media", "Foo Holdings"]


def stdlib_docstrings(n: int, min_words: int = 25) -> list[str]:
    """The first n docstrings of at least `min_words` words from the standard library's modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= min_words and doc not in found:
                    found.append(doc)
                    if len(found) == n:
                        return found
    return found


def shuffled(texts: list[str], seed: int = 0) -> list[str]:
    """Each text with its words in a random order (same words, no syntax)."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def boilerplate(n: int, seed: int = 0) -> list[str]:
    """n pages of navigation, cookie and shop boilerplate, 3–6 lines each."""
    rng = random.Random(seed)
    pages = []
    for _ in range(n):
        lines = rng.sample(BOILERPLATE, rng.randint(3, 6))
        pages.append("\n".join(line.format(year=rng.randint(2009, 2024), company=rng.choice(COMPANIES),
                                           n=rng.randint(2, 99), month=rng.choice(MONTHS)) for line in lines))
    return pages
