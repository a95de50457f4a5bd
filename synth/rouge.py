"""ROUGE-L F-measure of candidates against a growing pool, with rouge-score's tokenization.

Self-Instruct and Alpaca drop a generated instruction when its ROUGE-L F1 with any instruction
already in the pool is at least 0.7. `RougePool` tokenizes each pool entry once, when it is added,
exactly as `rouge_score` does (lowercase, non-alphanumerics to spaces, no stemming), and scores a
batch of candidates against the whole pool in one `rapidfuzz.process.cdist` call (the LCS of
token sequences, in C++, on all cores). F1 = 2·LCS / (len(candidate) + len(reference)).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from rapidfuzz.distance import LCSseq
from rapidfuzz.process import cdist


@functools.cache
def _tokenizer():
    """rouge-score's DefaultTokenizer, imported on first use (it imports nltk: ~3 s, which every
    worker would otherwise pay when the stage registry loads)."""
    from rouge_score.tokenizers import DefaultTokenizer

    return DefaultTokenizer(use_stemmer=False)


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's tokens of `text` (its DefaultTokenizer without stemming)."""
    return _tokenizer().tokenize(text)


def rouge_l_matrix(candidates: Sequence[list[str]], references: Sequence[list[str]], workers: int = -1) -> np.ndarray:
    """[len(candidates), len(references)] float64 ROUGE-L F1 between token lists (0 when either is empty)."""
    if not candidates or not references:
        return np.zeros((len(candidates), len(references)))
    lcs = cdist(candidates, references, scorer=LCSseq.similarity, dtype=np.int32, workers=workers)
    total = np.add.outer([len(c) for c in candidates], [len(r) for r in references])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * lcs / np.maximum(total, 1), 0.0)


class RougePool:
    """Instructions accepted so far; candidates are scored against all of them at once."""

    def __init__(self, texts: Sequence[str] = ()):
        self.texts: list[str] = []
        self.tokens: list[list[str]] = []
        self.extend(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def extend(self, texts: Sequence[str]) -> None:
        self.texts.extend(texts)
        self.tokens.extend(rouge_tokens(t) for t in texts)

    def most_similar(self, candidates: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """Each candidate's highest ROUGE-L F1 against the pool, and the pool text it came from."""
        if not self.texts:
            return np.zeros(len(candidates)), [None] * len(candidates)
        scores = rouge_l_matrix([rouge_tokens(c) for c in candidates], self.tokens)
        best = scores.argmax(axis=1)
        return scores[np.arange(len(candidates)), best], [self.texts[i] for i in best]

    def admit(self, candidates: Sequence[str], threshold: float) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """Add the candidates whose ROUGE-L F1 with the pool (including candidates admitted
        earlier in this call) stays below `threshold`. Returns (admitted mask, best score, most
        similar text) per candidate, in order."""
        tokens = [rouge_tokens(c) for c in candidates]
        if self.tokens:
            pool_scores = rouge_l_matrix(tokens, self.tokens)
            best_idx = pool_scores.argmax(axis=1)
            best = pool_scores[np.arange(len(tokens)), best_idx]
            similar: list[str | None] = [self.texts[i] for i in best_idx]
        else:
            best, similar = np.zeros(len(tokens)), [None] * len(tokens)
        within = rouge_l_matrix(tokens, tokens)  # candidate vs candidate, for the sequential part
        admitted = np.zeros(len(tokens), dtype=bool)
        for i in range(len(tokens)):
            earlier = np.flatnonzero(admitted[:i])
            if earlier.size:
                j = earlier[within[i, earlier].argmax()]
                if within[i, j] > best[i]:
                    best[i], similar[i] = within[i, j], candidates[j]
            admitted[i] = best[i] < threshold
        for i in np.flatnonzero(admitted):
            self.texts.append(candidates[i])
            self.tokens.append(tokens[i])
        return admitted, best, similar
