"""The numba fastText scorer gives fastText's own predict answers bit for bit, and declines what it cannot."""

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
def test_probabilities_equal_fasttext_bit_for_bit(corpus, tmp_path, word_ngrams, bucket, dim) -> None:
    path, texts = corpus
    model = fasttext.train_supervised(str(path), dim=dim, wordNgrams=word_ngrams, bucket=bucket, epoch=3,
                                      lr=0.5, thread=1, seed=1, verbose=0)
    model.save_model(str(tmp_path / "model.bin"))
    kernel = FastTextKernel.from_file(tmp_path / "model.bin")
    assert kernel is not None
    ours = kernel.predict_all(pl.Series(texts))
    expected = fasttext_matrix(model, texts)
    assert np.array_equal(ours, expected, equal_nan=True)
    assert np.isfinite(ours).all()  # `</s>` is in the vocabulary, so even empty text is scored
    assert len(set(ours[:, 0].tolist())) > len(texts) // 2  # the probabilities really vary


def fasttext_top(model, texts: list[str]) -> tuple[list[str | None], np.ndarray]:
    labels, probabilities = model.predict(texts, k=1)
    return ([row[0] if row else None for row in labels],
            np.array([p[0] if len(p) else np.nan for p in probabilities], dtype=np.float32))


def assert_top_equal(kernel: FastTextKernel, model, texts: list[str]) -> None:
    best, probabilities = kernel.predict_top(pl.Series(texts))
    labels, expected = fasttext_top(model, texts)
    assert [kernel.labels[b] if b >= 0 else None for b in best] == labels
    assert np.array_equal(probabilities, expected, equal_nan=True)


def test_the_packaged_language_model_top_label_equals_fasttext(corpus) -> None:
    # lid.176.ftz: quantized rows, a pruned bucket table, character n-grams, hierarchical softmax
    from tests.test_language import ENGLISH_SPANISH, SENTENCES, lid_path

    _, texts = corpus
    texts = texts + [s for group in SENTENCES.values() for s in group] + ENGLISH_SPANISH + [
        "Ελληνικά κείμενα", "हिन्दी वाक्य", "ภาษาไทย", "x" * 300, "a b c d e"]
    model = fasttext.load_model(lid_path())
    kernel = FastTextKernel.from_file(lid_path())
    assert kernel is not None and not kernel.scores_every_label
    assert_top_equal(kernel, model, texts)
    with pytest.raises(ValueError, match="best labels only"):
        kernel.predict_all(pl.Series(texts[:2]))


@pytest.mark.parametrize("settings", [
    {"minn": 2, "maxn": 5, "loss": "softmax"},
    {"minn": 3, "maxn": 3, "wordNgrams": 2, "loss": "hs"},
    {"loss": "hs"},
])
def test_subword_and_hierarchical_softmax_models_equal_fasttext(corpus, tmp_path, settings) -> None:
    path, texts = corpus
    model = fasttext.train_supervised(str(path), dim=12, bucket=50_000, epoch=3, lr=0.5, thread=1, seed=2,
                                      verbose=0, **settings)
    model.save_model(str(tmp_path / "model.bin"))
    kernel = FastTextKernel.from_file(tmp_path / "model.bin")
    assert_top_equal(kernel, model, texts)
    if settings["loss"] == "softmax":
        assert np.array_equal(kernel.predict_all(pl.Series(texts)), fasttext_matrix(model, texts), equal_nan=True)
    model.quantize(input=str(path), retrain=False, cutoff=2_000, dsub=4, qnorm=True)  # pruned buckets, norms
    model.save_model(str(tmp_path / "model.ftz"))
    assert_top_equal(FastTextKernel.from_file(tmp_path / "model.ftz"), model, texts)


def test_models_it_cannot_reproduce_are_left_to_fasttext(corpus, tmp_path) -> None:
    path, _ = corpus
    one_vs_all = fasttext.train_supervised(str(path), dim=8, loss="ova", epoch=1, thread=1, verbose=0)
    one_vs_all.save_model(str(tmp_path / "ova.bin"))
    assert FastTextKernel.from_file(tmp_path / "ova.bin") is None
    data = (tmp_path / "ova.bin").read_bytes()
    (tmp_path / "v11.bin").write_bytes(data[:4] + (11).to_bytes(4, "little") + data[8:])
    assert FastTextKernel.from_file(tmp_path / "v11.bin") is None  # another format version: fastText's job
    (tmp_path / "cut.bin").write_bytes((tmp_path / "ova.bin").read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.bin: truncated fastText model"):
        FastTextKernel.from_file(tmp_path / "cut.bin")
