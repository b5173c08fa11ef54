import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import csv
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from dlm.errors import ConfigError, InputError
from dlm.tokenizer import train_tokenizer
from dlm.training import data as data_mod
from dlm.training.data import (
    BatchIterator,
    DataConfig,
    PackedDataset,
    SFTDataset,
    build_dataset,
    eval_batches,
    expand_sources,
    iter_documents,
    split_of,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
JSON_PKG = STDLIB / "json"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(sorted(JSON_PKG.glob("*.py")), vocab_size=500)


def write_docs(folder: Path, texts: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, t in enumerate(texts):
        p = folder / f"doc{i:02d}.txt"
        p.write_text(t, encoding="utf-8")
        paths.append(p)
    return paths


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


# ---- config / sources ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"task": "chat"}, "data.task"),
        ({"seq_len": 1}, "data.seq_len"),
        ({"valid_fraction": 1.0}, "data.valid_fraction"),
        ({"valid_fraction": -0.1}, "data.valid_fraction"),
        ({"max_bytes": -1}, "data.max_bytes"),
    ],
)
def test_data_config_validation(kwargs, field):
    with pytest.raises(ConfigError) as ei:
        DataConfig(**kwargs)
    assert ei.value.field == field


def test_expand_sources_files_dirs_globs(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "x.py").write_text("x")
    (tmp_path / "a" / "sub" / "y.md").write_text("y")
    (tmp_path / "a" / "sub" / "README").write_text("r")
    (tmp_path / "a" / "img.png").write_bytes(b"\x89PNG")  # not text-like: skipped in folders
    (tmp_path / "a" / "__pycache__").mkdir()
    (tmp_path / "a" / "__pycache__" / "x.txt").write_text("cache")
    (tmp_path / "b.txt").write_text("b")
    got = expand_sources([str(tmp_path / "a"), str(tmp_path / "*.txt"), str(tmp_path / "b.txt")])
    assert got == sorted(
        [
            tmp_path / "a" / "sub" / "README",
            tmp_path / "a" / "sub" / "y.md",
            tmp_path / "a" / "x.py",
            tmp_path / "b.txt",
        ],
        key=str,
    )
    got = expand_sources([str(tmp_path / "**" / "*.md")])
    assert got == [tmp_path / "a" / "sub" / "y.md"]
    got = expand_sources([str(tmp_path / "a")], exclude=["*/sub/*"])
    assert got == [tmp_path / "a" / "x.py"]


def test_expand_sources_stdlib_and_exclude():
    got = expand_sources(["{stdlib}/json/*.py"])
    assert got == sorted(JSON_PKG.glob("*.py"), key=str) and len(got) >= 4
    folder = expand_sources(["{stdlib}/json"], exclude=["*/tool.py"])
    assert JSON_PKG / "decoder.py" in folder and JSON_PKG / "tool.py" not in folder


def test_expand_sources_no_match_names_field(tmp_path):
    (tmp_path / "ok.txt").write_text("ok")
    with pytest.raises(InputError) as ei:
        expand_sources([str(tmp_path / "ok.txt"), str(tmp_path / "missing*.txt")], field="data.valid")
    assert ei.value.field.startswith("data.valid") and "matched no files" in str(ei.value)
    with pytest.raises(InputError, match="exclude"):
        expand_sources([str(tmp_path / "ok.txt")], exclude=["*ok.txt"])


# ---- documents -------------------------------------------------------------------------------
def test_iter_documents_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_bytes("héllo \xff".encode("utf-8") + b"\xff")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bin").write_bytes(b"\x00\x01\x02")
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    records = [{"text": "first"}, "", {"messages": msgs}, {"text": ""}, {"text": "last", "x": 1}]
    write_jsonl(tmp_path / "d.jsonl", records)
    paths = expand_sources([str(tmp_path)])
    docs = list(iter_documents(paths))
    assert docs == [
        (str(tmp_path / "a.txt"), "héllo \xff\ufffd"),
        (f"{tmp_path / 'd.jsonl'}:1", "first"),
        (f"{tmp_path / 'd.jsonl'}:3", msgs),
        (f"{tmp_path / 'd.jsonl'}:5", "last"),
    ]
    assert list(iter_documents(paths)) == docs  # stable ids
    with pytest.raises(InputError, match="'body'") as ei:  # text_field is honoured
        list(iter_documents([tmp_path / "d.jsonl"], text_field="body"))
    assert ei.value.field == f"{tmp_path / 'd.jsonl'}:1"


@pytest.mark.parametrize(
    "line, match",
    [
        ("{bad json", "invalid JSON"),
        ('{"body": "x"}', "'text'"),
        ('{"text": 5}', "'text'"),
        ('{"messages": [{"role": "user"}]}', "messages"),
        ("[1, 2]", "'text'"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, match):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, line])
    with pytest.raises(InputError) as ei:
        list(iter_documents([p]))
    assert ei.value.field == f"{p}:2"
    assert match in str(ei.value)


def test_datasets_backed_csv_and_parquet(tmp_path):
    pytest.importorskip("datasets")
    csv_path = tmp_path / "t.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "body"])
        w.writerows([[1, "alpha, with comma"], [2, "beta\nline"], [3, "gamma"]])
    docs = list(iter_documents([csv_path], text_field="body"))
    assert docs == [(f"{csv_path}:1", "alpha, with comma"), (f"{csv_path}:2", "beta\nline"), (f"{csv_path}:3", "gamma")]
    with pytest.raises(InputError, match="'text'") as ei:
        list(iter_documents([csv_path]))
    assert str(csv_path) in ei.value.field

    import datasets

    pq = tmp_path / "t.parquet"
    datasets.Dataset.from_dict({"text": ["one", "two"], "n": [1, 2]}).to_parquet(str(pq))
    assert [d for _, d in iter_documents([pq])] == ["one", "two"]


def test_split_of_is_deterministic_and_seeded():
    ids = [f"/data/file{i}.txt" for i in range(2000)]
    a = [split_of(i, 0.1, seed=0) for i in ids]
    assert a == [split_of(i, 0.1, seed=0) for i in ids]
    assert set(a) == {"train", "valid"} and 100 < a.count("valid") < 300
    assert a != [split_of(i, 0.1, seed=1) for i in ids]
    assert all(split_of(i, 0.0, 0) == "train" for i in ids)


# ---- packing / caching -------------------------------------------------------------------------
def test_packing_puts_eos_between_docs(tmp_path, tok):
    texts = ["def a():\n    return 1\n", "import json\nprint(json.dumps({}))\n", "x = [i for i in range(10)]\n" * 5]
    write_docs(tmp_path / "src", texts)
    cfg = DataConfig(train=[str(tmp_path / "src")], valid_fraction=0.0, seq_len=8)
    train, valid = build_dataset(cfg, tok, tmp_path / "cache")
    expected = []
    for t in texts:
        expected += tok.encode(t) + [tok.eos_token_id]
    assert isinstance(train, PackedDataset) and len(valid) == 0
    assert train.num_tokens == len(expected) and len(train) == len(expected) // 8
    windows = [train[i] for i in range(len(train))]
    assert all(w.shape == (8,) and w.dtype == np.int64 for w in windows)
    assert np.concatenate(windows).tolist() == expected[: len(train) * 8]
    b = train.batch([1, 0])
    assert b["input_ids"].dtype == torch.long and b["input_ids"].shape == (2, 8)
    assert b["input_ids"][1].tolist() == expected[:8]
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["train"]["docs"] == 3
    with pytest.raises(IndexError):
        train[len(train)]


def test_valid_split_forced_and_explicit(tmp_path, tok):
    texts = [f"document number {i}\n" * (10 + 5 * i) for i in range(3)]
    write_docs(tmp_path / "src", texts)
    cfg = DataConfig(train=[str(tmp_path / "src")], valid_fraction=0.001, seq_len=4)
    train, valid = build_dataset(cfg, tok, tmp_path / "c1")
    meta = json.loads((tmp_path / "c1" / "meta.json").read_text())
    assert meta["valid"]["docs"] == 1 and meta["train"]["docs"] == 2
    per_doc = [tok.encode(t) + [tok.eos_token_id] for t in texts]
    k = [i for i, d in enumerate(per_doc) if d == valid.tokens.tolist()]
    assert len(k) == 1 and len(valid) > 0  # exactly one whole document moved to valid
    assert train.tokens.tolist() == sum((d for i, d in enumerate(per_doc) if i != k[0]), [])
    write_docs(tmp_path / "held", ["held out text\n" * 10])
    cfg2 = DataConfig(train=[str(tmp_path / "src")], valid=[str(tmp_path / "held")], seq_len=4)
    train2, valid2 = build_dataset(cfg2, tok, tmp_path / "c2")
    assert valid2.num_tokens == len(tok.encode("held out text\n" * 10)) + 1
    assert train2.num_tokens == train.num_tokens + valid.num_tokens


def test_max_bytes_caps_documents(tmp_path, tok):
    write_docs(tmp_path / "src", ["a" * 100, "b" * 100, "c" * 100])
    cfg = DataConfig(train=[str(tmp_path / "src")], valid_fraction=0.0, seq_len=2, max_bytes=150)
    build_dataset(cfg, tok, tmp_path / "cache")
    assert json.loads((tmp_path / "cache" / "meta.json").read_text())["train"]["docs"] == 2


def test_cache_reuse_and_invalidation(tmp_path, tok, monkeypatch):
    paths = write_docs(tmp_path / "src", ["alpha beta gamma\n" * 30, "delta epsilon\n" * 30])
    cfg = DataConfig(train=[str(tmp_path / "src")], valid_fraction=0.0, seq_len=16)
    cache = tmp_path / "cache"
    first, _ = build_dataset(cfg, tok, cache)
    st = (cache / "train.bin").stat()
    real_build = data_mod._build_cache
    calls = []
    monkeypatch.setattr(data_mod, "_build_cache", lambda *a: calls.append(1) or real_build(*a))
    second, _ = build_dataset(cfg, tok, cache)
    st2 = (cache / "train.bin").stat()
    assert calls == [] and (st2.st_mtime_ns, st2.st_ino) == (st.st_mtime_ns, st.st_ino)
    assert np.array_equal(second[0], first[0])
    with open(paths[1], "a") as f:
        f.write("zeta eta theta\n" * 10)
    third, _ = build_dataset(cfg, tok, cache)
    assert calls == [1] and third.num_tokens > first.num_tokens
    build_dataset(DataConfig(train=cfg.train, valid_fraction=0.0, seq_len=8), tok, cache)  # cfg change
    assert calls == [1, 1]
    assert not [p for p in cache.iterdir() if ".tmp" in p.name]


def test_large_vocab_uses_uint32(tmp_path, tok):
    class Big:
        def __getattr__(self, name):
            return getattr(tok, name)

        vocab_size = 70_000

    write_docs(tmp_path / "src", ["some text here\n" * 5])
    cfg = DataConfig(train=[str(tmp_path / "src")], valid_fraction=0, seq_len=4)
    train, _ = build_dataset(cfg, Big(), tmp_path / "c")
    assert train.tokens.dtype == np.uint32
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["dtype"] == "uint32"


def test_too_little_data_and_text_for_sft(tmp_path, tok):
    write_docs(tmp_path / "src", ["tiny"])
    with pytest.raises(InputError) as ei:
        build_dataset(DataConfig(train=[str(tmp_path / "src")], seq_len=64), tok, tmp_path / "c")
    assert ei.value.field == "data.train" and "seq_len=64" in str(ei.value)
    with pytest.raises(InputError) as ei:
        build_dataset(DataConfig(train=[str(tmp_path / "src")], seq_len=4, task="sft"), tok, tmp_path / "c2")
    assert ei.value.field == "data.task"


def test_sft_dataset_prompt_lengths_and_eos_padding(tmp_path, tok):
    def chat(q, a):
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    examples = [chat("what is json?", "a format"), chat("hi", "hello " * 40), chat("2+2", "4")]
    write_jsonl(tmp_path / "sft.jsonl", examples)
    L = 32
    cfg = DataConfig(train=[str(tmp_path / "sft.jsonl")], task="sft", seq_len=L, valid_fraction=0.0)
    train, valid = build_dataset(cfg, tok, tmp_path / "cache")
    assert isinstance(train, SFTDataset) and len(train) == 3 and len(valid) == 0
    for i, ex in enumerate(examples):
        prompt, answer = tok.sft_example(ex["messages"])
        row = train[i].tolist()
        assert len(row) == L and int(train.prompt_lengths[i]) == len(prompt)
        assert row[: len(prompt)] == prompt
        body = (prompt + answer)[:L]
        assert row[: len(body)] == body
        assert row[len(body) :] == [tok.eos_token_id] * (L - len(body))
    assert len(tok.sft_example(examples[1]["messages"])[1]) > L  # the long answer was truncated
    b = train.batch([2, 0])
    assert b["input_ids"].shape == (2, L) and b["prompt_lengths"].dtype == torch.long
    assert b["prompt_lengths"].tolist() == [train.prompt_lengths[2], train.prompt_lengths[0]]
    again, _ = build_dataset(cfg, tok, tmp_path / "cache")  # from cache: same content
    assert np.array_equal(again.tokens, train.tokens) and np.array_equal(again.prompt_lengths, train.prompt_lengths)


def test_prompt_completion_records_as_text_or_token_ids(tmp_path, tok):
    """Raw SFT examples without a chat template (distillation data): {"prompt", "completion"} texts, or
    {"prompt_ids", "completion_ids"} kept token for token; the completion gets the EOS and its padding."""
    ids = tok.encode("def add(a, b):\n    return a + b\n", parse_special=False)
    records = [
        {"prompt": "import os\n", "completion": "print(os.sep)\n"},
        {"prompt_ids": ids[:4], "completion_ids": ids[4:]},
    ]
    write_jsonl(tmp_path / "pc.jsonl", records)
    L = 24
    cfg = DataConfig(train=[str(tmp_path / "pc.jsonl")], task="sft", seq_len=L, valid_fraction=0.0)
    train, _ = build_dataset(cfg, tok, tmp_path / "cache")
    first = tok.encode("import os\n", parse_special=False), tok.encode("print(os.sep)\n", parse_special=False)
    for i, (prompt, answer) in enumerate([first, (ids[:4], ids[4:])]):
        body = prompt + answer + [tok.eos_token_id]
        assert int(train.prompt_lengths[i]) == len(prompt)
        assert train[i].tolist() == body + [tok.eos_token_id] * (L - len(body))
    pre, _ = build_dataset(DataConfig(train=[str(tmp_path / "pc.jsonl")], seq_len=8, valid_fraction=0.0), tok,
                           tmp_path / "cache-pre")  # fmt: skip
    assert pre.tokens.tolist()[: len(first[0]) + len(first[1]) + 1] == first[0] + first[1] + [tok.eos_token_id]

    write_jsonl(tmp_path / "bad.jsonl", [{"prompt_ids": [1, 2], "completion_ids": [tok.vocab_size + 5]}])
    bad = DataConfig(train=[str(tmp_path / "bad.jsonl")], task="sft", seq_len=L, valid_fraction=0.0)
    with pytest.raises(InputError, match="completion_ids.*outside the vocabulary"):
        build_dataset(bad, tok, tmp_path / "cache-bad")
    write_jsonl(tmp_path / "bad2.jsonl", [{"prompt_ids": "12", "completion": "x"}])
    with pytest.raises(InputError, match="prompt_ids"):
        list(iter_documents([tmp_path / "bad2.jsonl"]))


# ---- batching ------------------------------------------------------------------------------------
def windows(n: int, L: int = 4) -> PackedDataset:
    return PackedDataset(np.arange(n * L, dtype=np.uint16), L)  # window i starts with token i*L


def ids_of(batch) -> list[int]:
    return (batch["input_ids"][:, 0] // 4).tolist()


def test_batch_iterator_deterministic_and_seeded():
    ds = windows(20)
    a = [ids_of(next(BatchIterator(ds, 4, seed=3))) for _ in range(2)]
    it1, it2 = BatchIterator(ds, 4, seed=3), BatchIterator(ds, 4, seed=3)
    s1 = [ids_of(next(it1)) for _ in range(12)]
    assert s1 == [ids_of(next(it2)) for _ in range(12)] and a[0] == a[1] == s1[0]
    it3 = BatchIterator(ds, 4, seed=4)
    assert s1 != [ids_of(next(it3)) for _ in range(12)]
    assert s1[0] == np.random.default_rng(3).permutation(20)[:4].tolist()


def test_batch_iterator_epoch_wrap_drops_remainder():
    it = BatchIterator(windows(10), 3, seed=0)
    epoch0 = [ids_of(next(it)) for _ in range(3)]
    assert it.state_dict() == {"epoch": 0, "position": 9}
    flat = sum(epoch0, [])
    assert len(set(flat)) == 9  # no repeats inside an epoch, one window dropped
    nxt = ids_of(next(it))
    assert it.state_dict() == {"epoch": 1, "position": 3}
    assert nxt == np.random.default_rng(1).permutation(10)[:3].tolist()


def test_batch_iterator_resume_gives_identical_batches():
    ds = windows(10)
    it = BatchIterator(ds, 3, seed=7)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.state_dict()))
    expected = [ids_of(next(it)) for _ in range(6)]
    resumed = BatchIterator(ds, 3, seed=7)
    resumed.load_state_dict(state)
    assert [ids_of(next(resumed)) for _ in range(6)] == expected
    with pytest.raises(InputError):
        resumed.load_state_dict({"epoch": 0})


def test_batch_iterator_ranks_partition_global_batch():
    ds = windows(16)
    full = [ids_of(next(it)) for it in [BatchIterator(ds, 4, seed=1)] for _ in range(3)]
    r0, r1 = BatchIterator(ds, 4, 1, rank=0, world_size=2), BatchIterator(ds, 4, 1, rank=1, world_size=2)
    for g in full:
        a, b = ids_of(next(r0)), ids_of(next(r1))
        assert a == g[0::2] and b == g[1::2]


def test_batch_iterator_rejects_tiny_dataset():
    with pytest.raises(InputError, match="batch_size"):
        BatchIterator(windows(2), 3, seed=0)


def test_eval_batches_in_index_order():
    ds = windows(7)
    got = [ids_of(b) for b in eval_batches(ds, 3, max_batches=10)]
    assert got == [[0, 1, 2], [3, 4, 5], [6]]
    assert [ids_of(b) for b in eval_batches(ds, 3, max_batches=2)] == [[0, 1, 2], [3, 4, 5]]
    assert list(eval_batches(windows(0), 3, 5)) == []


def test_split_writer_remove_range_keeps_other_documents(tmp_path):
    w = data_mod._SplitWriter(tmp_path / "t.bin", "uint16")
    w.write([1, 2, 3])
    start, length = w.write([4, 5])
    w.write([6, 7, 8, 9])
    w.remove_range(start, length)
    w.write([10])
    w.finish()
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == [1, 2, 3, 6, 7, 8, 9, 10]
    assert (w.num_tokens, w.docs) == (8, 3)
