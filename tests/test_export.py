"""`datamill export`: a run's corpus read back as Megatron-LM's indexed dataset (a reader written here
from the documented .idx layout), with datatrove's own dataset reader (nanotron's dataloader), and
with `datasets` (the HF folder): same tokens, same document boundaries, same records."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from datamill.curate.cli import app

LICENCES = Path("/usr/share/common-licenses")
EXTRA = [
    "Ünïcode survives: naïve café, Straße, 東京, emoji 🚀 and a tab\there.",
    "A short one.",
]


def real_documents(n: int = 60) -> list[str]:
    """Paragraphs of the licences on this machine, plus a non-ASCII and a tiny text."""
    docs = []
    for file in sorted(p for p in LICENCES.glob("*") if p.is_file()):
        docs += [" ".join(b.split()) for b in file.read_text(errors="replace").split("\n\n") if len(b.split()) > 8]
    docs = list(dict.fromkeys(docs))[:n]
    assert len(docs) >= 30, "needs /usr/share/common-licenses"
    return docs[:20] + EXTRA + docs[20:] + [docs[3]]  # one exact duplicate for the run to drop


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run with two output shards (exact_dedup drops one record)."""
    root = tmp_path_factory.mktemp("export")
    source = root / "raw.jsonl"
    source.write_text("".join(json.dumps({"text": t, "url": f"u{i}"}) + "\n" for i, t in enumerate(real_documents())))
    recipe = {"name": "licences", "sources": [{"type": "jsonl", "path": str(source), "name": "web"}],
              "stages": [{"type": "exact_dedup"}],
              "output": {"dir": str(root / "run"), "shard_rows": 40}, "executor": {"batch_rows": 16}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["run", str(root / "recipe.yaml"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert len(list((root / "run" / "shards").glob("*.parquet"))) == 2
    return root / "run"


@pytest.fixture(scope="module")
def tokenizer():
    from datamill.curate.export.tokens import load_export_tokenizer

    return load_export_tokenizer(None)


def shard_frames(run: Path) -> list[pl.DataFrame]:
    return [pl.read_parquet(f) for f in sorted((run / "shards").glob("*.parquet"))]


def expected_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def invoke(*args: str) -> tuple[int, str]:
    """Exit code and output (rich's line wrapping undone) of `datamill ARGS`."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def export(run: Path, fmt: str, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(app, ["export", str(run), "--format", fmt, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert (out / "datamill_export.json").is_file()


def read_megatron(prefix: Path) -> list[np.ndarray]:
    """Megatron-LM's MMIDIDX layout, read from its documentation: header, version, dtype code,
    sequence count, document count, int32 lengths, int64 byte pointers, int64 document indices."""
    raw = prefix.with_name(prefix.name + ".idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, n_seq, n_doc = struct.unpack_from("<QBQQ", raw, 9)
    assert version == 1
    dtype = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}[code]
    offset = 9 + 8 + 1 + 8 + 8
    lengths = np.frombuffer(raw, np.int32, n_seq, offset)
    pointers = np.frombuffer(raw, np.int64, n_seq, offset + 4 * n_seq)
    documents = np.frombuffer(raw, np.int64, n_doc, offset + 12 * n_seq)
    assert offset + 12 * n_seq + 8 * n_doc == len(raw)
    data = prefix.with_name(prefix.name + ".bin").read_bytes()
    sequences = [np.frombuffer(data, dtype, n, p) for n, p in zip(lengths, pointers)]
    assert sum(s.nbytes for s in sequences) == len(data)
    # a document is the sequences documents[d]:documents[d+1]
    return [np.concatenate(sequences[a:b]) for a, b in zip(documents[:-1], documents[1:])]


def test_megatron_export_keeps_every_document_and_its_tokens(run_dir, tokenizer, tmp_path):
    export(run_dir, "megatron", tmp_path / "mg")
    manifest = json.loads((tmp_path / "mg" / "datamill_export.json").read_text())
    assert manifest["data_path"] == "licences_text_document" and manifest["dtype"] == "uint16"
    documents = read_megatron(tmp_path / "mg" / manifest["data_path"])
    texts = pl.concat(shard_frames(run_dir))["text"].to_list()
    assert len(documents) == len(texts) == manifest["documents"]
    assert [d.tolist() for d in documents] == expected_documents(tokenizer, texts)
    assert tokenizer.decode(documents[texts.index(EXTRA[0])][:-1]) == EXTRA[0]
    short = documents[texts.index("A short one.")].tolist()
    assert short[-1] == tokenizer.eos_token_id and tokenizer.decode(short[:-1]) == "A short one."


def test_nanotron_export_reads_back_with_datatroves_dataset(run_dir, tokenizer, tmp_path):
    from datatrove.utils.dataset import DatatroveFolderDataset

    export(run_dir, "nanotron", tmp_path / "nt")
    seq_len = 31
    dataset = DatatroveFolderDataset(str(tmp_path / "nt"), seq_len=seq_len, token_size=2, return_positions=True)
    assert len(dataset.files) == 2
    windows = [dataset[i] for i in range(len(dataset))]
    expected_ids, expected_positions = [], []
    for frame in shard_frames(run_dir):  # per file: whole windows of seq_len + 1 tokens
        docs = expected_documents(tokenizer, frame["text"].to_list())
        stream = np.concatenate([np.asarray(d) for d in docs])
        starts = np.repeat(np.cumsum([0] + [len(d) for d in docs[:-1]]), [len(d) for d in docs])
        for w in range(len(stream) // (seq_len + 1)):
            span = slice(w * (seq_len + 1), (w + 1) * (seq_len + 1))
            t = np.arange(span.start, span.stop)
            expected_ids.append(stream[span].tolist())
            expected_positions.append((t - np.maximum(starts[span], span.start)).tolist())
    assert [w["input_ids"].tolist() for w in windows] == expected_ids
    assert [w["positions"].tolist() for w in windows] == expected_positions  # from the .ds.index boundaries
    meta = (tmp_path / "nt" / "part-00000-000.ds.metadata").read_text().splitlines()
    assert meta[0] == "smollm2-135m|2" and int(meta[1]) > 0


def test_hf_export_loads_with_datasets_and_its_card_holds_stats_and_recipe(run_dir, tmp_path):
    import datasets

    export(run_dir, "hf", tmp_path / "hf")
    loaded = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "cache"))
    expected = pl.concat(shard_frames(run_dir))
    assert loaded.num_rows == expected.height
    assert loaded.column_names == expected.columns
    for column in expected.columns:
        assert loaded[column] == expected[column].to_list(), column
    card = (tmp_path / "hf" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"][0]["path"] == "data/train-*"
    assert "exact_duplicate: 1" in card and "| `web` | `jsonl` |" in card
    recipe = yaml.safe_load(card.split("```yaml")[1].split("```")[0])
    assert recipe["name"] == "licences" and [s["type"] for s in recipe["stages"]] == ["exact_dedup"]


def wide_tokenizer(folder: Path, texts: list[str]) -> Path:
    """A word-level tokenizer folder whose ids for real words are above 65,535."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace().pre_tokenize_str
    words = sorted({word for t in texts for word, _ in split(t)})
    vocab = {"<unk>": 0, "</s>": 1} | {f"filler{i}": i + 2 for i in range(70_000)}
    vocab |= {w: len(vocab) + k for k, w in enumerate(words)}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=model, eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    return folder


def test_a_user_tokenizer_with_a_large_vocabulary_writes_32_bit_tokens(run_dir, tmp_path):
    texts = pl.concat(shard_frames(run_dir))["text"].to_list()
    folder = wide_tokenizer(tmp_path / "tok", texts)
    export(run_dir, "megatron", tmp_path / "mg", "--tokenizer", str(folder))
    export(run_dir, "nanotron", tmp_path / "nt", "--tokenizer", str(folder))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    expected = expected_documents(tok, texts)
    assert max(max(d) for d in expected) > 65_535
    assert [d.tolist() for d in read_megatron(tmp_path / "mg" / "licences_text_document")] == expected
    tokens = np.concatenate([np.fromfile(f, "<u4") for f in sorted((tmp_path / "nt").glob("*.ds"))])
    assert tokens.tolist() == [t for d in expected for t in d]


def test_prompt_completion_records_get_a_loss_mask_in_the_datatrove_shards(tokenizer, tmp_path):
    folder = tmp_path / "sft"
    folder.mkdir()
    rows = [{"prompt": "Name a colour.", "completion": " Blue."}, {"prompt": "Two plus two?", "completion": " Four."}]
    pl.DataFrame(rows).write_parquet(folder / "part-0.parquet")
    export(folder, "nanotron", tmp_path / "nt")
    tokens = np.fromfile(tmp_path / "nt" / "part-0.ds", "<u2")
    loss = np.fromfile(tmp_path / "nt" / "part-0.ds.loss", np.uint8)
    ends = np.fromfile(tmp_path / "nt" / "part-0.ds.index", "<u8")
    first_prompt = tokenizer("Name a colour.", add_special_tokens=False)["input_ids"]
    first = first_prompt + tokenizer(" Blue.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokens[: len(first)].tolist() == first and ends[0] == len(first) and ends[-1] == tokens.size
    assert loss[: len(first)].tolist() == [0] * len(first_prompt) + [1] * (len(first) - len(first_prompt))


def test_export_refuses_to_mix_into_a_folder_and_names_bad_input(run_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, output = invoke("export", run_dir, "--format", "hf", "--out", out)
    assert code == 1 and "is not empty" in output and (out / "mine.txt").read_text() == "keep me"
    export(run_dir, "hf", tmp_path / "again")
    export(run_dir, "hf", tmp_path / "again", "--overwrite")  # an earlier export may be replaced
    code, output = invoke("export", run_dir, "--format", "nanotron", "--out", tmp_path / "z", "--data-format", "chat")
    assert code == 1 and "unknown record format 'chat'" in output
    code, output = invoke("export", run_dir, "--format", "nanotron", "--out", tmp_path / "z", "--data-format", "messages")
    assert code == 1 and "has no column 'messages'" in output and not (tmp_path / "z").exists()
    code, output = invoke("export", tmp_path / "nothing", "--format", "megatron", "--out", tmp_path / "x")
    assert code == 1 and "nothing is neither a run dir nor a folder" in output
    code, output = invoke("export", run_dir, "--format", "megatron", "--out", tmp_path / "y",
                          "--tokenizer", tmp_path / "no-such-tokenizer")
    assert code == 1 and "no-such-tokenizer does not exist" in output and not (tmp_path / "y").exists()
