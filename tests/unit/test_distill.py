"""Distillation data (`dlm distill data`): a causal teacher's greedy completions of corpus prompts, deterministic
under a seed, resumable shard by shard, refused into a folder made with other settings, and readable as SFT."""

import json

import pytest

from dlm.errors import DLMError, InputError
from dlm.sampling import GenerationConfig
from dlm.sampling.autoregressive import generate_autoregressive
from dlm.tokenizer import DLMTokenizer
from dlm.training.data import DataConfig, build_dataset
from dlm.training.distill import TeacherDataConfig, cut_prompts, make_teacher_data
from dlm.builtin import builtin_path
from tests.conftest import PYTHON_CORPUS, tiny_lm

BUILTIN = builtin_path("builtin-diffusion")

SOURCES = [str(PYTHON_CORPUS / "json" / "*.py.txt")]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    tiny_lm(DLMTokenizer.from_dir(BUILTIN), "causal", max_seq_len=128).save_pretrained(d)
    return d


def _cfg(teacher, out, **kw):
    base = dict(teacher=str(teacher), data=SOURCES, out=str(out), prompts=10, prompt_tokens=12, gen_length=8,
                batch_size=3, shard_size=4, seed=1)  # fmt: skip
    return TeacherDataConfig(**{**base, **kw})


def _files(d):
    return {p.name: p.read_text() for p in sorted(d.glob("part-*.jsonl"))}


def test_teacher_data_is_deterministic_and_resumes_shard_by_shard(teacher, tmp_path):
    full = make_teacher_data(_cfg(teacher, tmp_path / "a"), log=lambda m: None)
    assert full["complete"] and full["completions"] == 10 and full["shards"] == 3
    part = make_teacher_data(_cfg(teacher, tmp_path / "b"), log=lambda m: None, max_shards=1)  # interrupted
    assert not part["complete"] and len(_files(tmp_path / "b")) == 1
    done = make_teacher_data(_cfg(teacher, tmp_path / "b"), log=lambda m: None)
    assert done["complete"] and _files(tmp_path / "b") == _files(tmp_path / "a")
    other = make_teacher_data(_cfg(teacher, tmp_path / "c", seed=2), log=lambda m: None)
    assert other["complete"] and _files(tmp_path / "c") != _files(tmp_path / "a")
    with pytest.raises(InputError, match="out"):
        make_teacher_data(_cfg(teacher, tmp_path / "a", gen_length=6), log=lambda m: None)


def test_records_are_the_teacher_greedy_completions_and_train_as_sft(teacher, tmp_path):
    import dlm

    make_teacher_data(_cfg(teacher, tmp_path / "d"), log=lambda m: None)
    lm = dlm.load(teacher)
    recs = [json.loads(line) for p in sorted((tmp_path / "d").glob("part-*.jsonl")) for line in p.open()]
    assert all(len(r["prompt_ids"]) == 12 and len(r["completion_ids"]) <= 8 for r in recs)
    alone = generate_autoregressive(lm.model, [recs[0]["prompt_ids"]], GenerationConfig(gen_length=8, steps=8))
    assert alone.sequences[0] == recs[0]["completion_ids"]
    cfg = DataConfig(train=[str(tmp_path / "d" / "part-*.jsonl")], task="sft", seq_len=24, valid_fraction=0.0)
    train, _ = build_dataset(cfg, lm.tokenizer, tmp_path / "cache")
    assert len(train) == 10 and int(train.prompt_lengths[0]) == 12


def test_corpus_continuations_are_the_corpus_next_tokens_in_the_same_windows(teacher, tmp_path):
    taught = make_teacher_data(_cfg(teacher, tmp_path / "t"), log=lambda m: None)
    real = make_teacher_data(_cfg(teacher, tmp_path / "r", corpus_continuations=True), log=lambda m: None)
    assert real["complete"] and real["fingerprint"] != taught["fingerprint"]
    read = lambda d: [json.loads(line) for p in sorted(d.glob("part-*.jsonl")) for line in p.open()]  # noqa: E731
    t, r = read(tmp_path / "t"), read(tmp_path / "r")
    assert [x["prompt_ids"] for x in t] == [x["prompt_ids"] for x in r]
    assert [x["completion_ids"] for x in t] != [x["completion_ids"] for x in r]
    tok = DLMTokenizer.from_dir(BUILTIN)
    from dlm.training.documents import expand_sources, iter_documents

    docs = [tok.encode(d, parse_special=False) for _, d in iter_documents(expand_sources(SOURCES, "data"))]
    for x in r:  # each completion is the text that follows its prompt in its document
        i, o = map(int, x["source"].split(":"))
        assert docs[i][o : o + 12] == x["prompt_ids"] and docs[i][o + 12 : o + 20] == x["completion_ids"]


def test_bad_settings_name_the_field(teacher, tmp_path):
    with pytest.raises(DLMError, match="prompts"):
        _cfg(teacher, tmp_path, prompts=0)
    with pytest.raises(InputError, match="teacher"):
        make_teacher_data(_cfg(BUILTIN, tmp_path / "x"), log=lambda m: None)  # the diffusion built-in
    with pytest.raises(InputError, match="data"):
        cut_prompts([[1, 2, 3]], 4, 8, 0)


def test_a_loop_free_teacher_keeps_its_completions_free_of_repeated_ngrams(teacher, tmp_path):
    from dlm.training.distill import _fingerprint

    def grams(seq, n=3):
        return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]

    plain = make_teacher_data(_cfg(teacher, tmp_path / "p", gen_length=24), log=lambda m: None)
    free = make_teacher_data(_cfg(teacher, tmp_path / "f", gen_length=24, no_repeat_ngram_size=3), log=lambda m: None)
    assert plain["fingerprint"] != free["fingerprint"]
    # the default leaves the fingerprint of datasets made before the option existed as it was
    assert plain["fingerprint"] == _fingerprint(_cfg(teacher, tmp_path, gen_length=24), plain["tokenizer_sha1"])
    recs = {k: [json.loads(line) for p in sorted((tmp_path / k).glob("part-*.jsonl")) for line in p.open()]
            for k in ("p", "f")}  # fmt: skip
    assert any(len(set(grams(r["completion_ids"]))) < len(grams(r["completion_ids"])) for r in recs["p"])
    for r in recs["f"]:
        full = r["prompt_ids"] + r["completion_ids"]
        new = grams(full)[len(r["prompt_ids"]) - 2 :]
        assert all(g not in grams(full)[: j + len(r["prompt_ids"]) - 2] for j, g in enumerate(new)), r
    with pytest.raises(DLMError, match="no-repeat-ngram-size"):
        _cfg(teacher, tmp_path, no_repeat_ngram_size=-1)
