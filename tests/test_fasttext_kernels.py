"""The numba fastText scorer gives fastText's own predict probabilities bit for bit, and declines what it cannot."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datamill.filters.fasttext_kernels import FastTextKernel
from tests.classifier_corpus import boilerplate, shuffled, stdlib_docstrings

fasttext = pytest.importorskip("fasttext")

EDGE_CASES = [
    "", "   ", "\t\v\f\r", "__label__real is a label token here", "__label__unknownlabel then words",
    "ünïcödé wörds, ñ and 日本語 bytes above 127", "a\x00b nul-separated", "trailing spaces   ",
    "the the the the the the the the", "</s> typed out", "words before </s> and after it",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    docs = stdlib_docstrings(160)
    lines = [f"__label__real {' '.join(d.split())}" for d in docs[:120]]
    lines += [f"__label__junk {' '.join(d.split())}" for d in shuffled(docs[:60]) + boilerplate(60)]
    path = tmp_path_factory.mktemp("ft") / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    held_out = [" ".join(d.split()) for d in docs[120:] + shuffled(docs[120:], seed=1) + boilerplate(20, seed=2)]
    return path, held_out + EDGE_CASES


def fasttext_matrix(model, texts: list[str]) -> np.ndarray:
    """fastText's predict(k=-1) as a texts × labels matrix in label-id order (NaN: no prediction)."""
    names = model.get_labels()
    out = np.full((len(texts), len(names)), np.nan, dtype=np.float32)
    labels, probabilities = model.predict(texts, k=-1)
    for row, (found, values) in enumerate(zip(labels, probabilities)):
        for name, value in zip(found, values):
            out[row, names.index(name)] = value
    return out


@pytest.mark.parametrize("word_ngrams,bucket,dim", [(1, 2_000_000, 16), (2, 5_000, 32), (3, 200, 8)])
def test_probabilities_equal_fasttext_bit_for_bit(corpus, word_ngrams, bucket, dim) -> None:
    path, texts = corpus
    model = fasttext.train_supervised(str(path), dim=dim, wordNgrams=word_ngrams, bucket=bucket, epoch=3,
                                      lr=0.5, thread=1, seed=1, verbose=0)
    kernel = FastTextKernel.for_model(model)
    assert kernel is not None
    ours = kernel.predict(pl.Series(texts))
    expected = fasttext_matrix(model, texts)
    assert np.array_equal(ours, expected, equal_nan=True)
    assert np.isfinite(ours).all()  # `</s>` is in the vocabulary, so even empty text is scored
    assert len(set(ours[:, 0].tolist())) > len(texts) // 2  # the probabilities really vary


def test_models_it_cannot_reproduce_are_left_to_fasttext(corpus, tmp_path) -> None:
    path, _ = corpus
    subwords = fasttext.train_supervised(str(path), dim=8, minn=2, maxn=4, epoch=1, thread=1, verbose=0)
    one_vs_all = fasttext.train_supervised(str(path), dim=8, loss="ova", epoch=1, thread=1, verbose=0)
    assert FastTextKernel.for_model(subwords) is None
    assert FastTextKernel.for_model(one_vs_all) is None
    quantized = fasttext.train_supervised(str(path), dim=8, epoch=1, thread=1, verbose=0)
    quantized.quantize(input=str(path), retrain=False, dsub=2)
    assert FastTextKernel.for_model(quantized) is None
