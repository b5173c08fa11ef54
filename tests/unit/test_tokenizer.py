import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import sysconfig
from pathlib import Path

import pytest

from dlm.errors import CheckpointError, ConfigError, InputError
from dlm.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, DLMTokenizer, train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
JSON_FILES = sorted((STDLIB / "json").glob("*.py"))

SAMPLES = [
    "def f(x):\n    return {'a': [1, 2.5, None]}  # comment\n\tindent\r\n",
    "Grüße, 世界! Ünïcödé — emoji 🎉🐍 and combining e\u0301.",
    "  leading spaces and trailing  ",
    "",
    "\n\n\n",
    "text with a literal <|eos|> and <|mask|> inside",
]

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi\nplease 🙂"},
    {"role": "assistant", "content": "hi there"},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(JSON_FILES, vocab_size=600, out_dir=out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir) -> DLMTokenizer:
    return DLMTokenizer.from_dir(tok_dir)


def test_special_token_ids_are_first_in_order(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS.values()] == list(range(7))
    assert tok.special_ids == {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 1, 2, 3)
    assert tok.id_to_token(3) == "<|mask|>"
    assert tok.vocab_size == 600
    # every single byte is encodable (byte-level alphabet present)
    assert all(tok.decode(tok.encode(chr(c))) == chr(c) for c in range(1, 256))


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_decode_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.bos_token_id not in ids  # no BOS added automatically
    if text:
        assert ids[-1] != tok.eos_token_id or text.endswith("<|eos|>")


def test_round_trip_python_source_and_batch(tok):
    texts = [p.read_text(encoding="utf-8") for p in JSON_FILES[:3]]
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert [tok.decode(ids) for ids in batch] == texts
    # BPE merges actually compress the training text
    assert len(batch[0]) < 0.6 * len(texts[0].encode())


def test_special_token_text_maps_to_special_id_and_can_be_skipped(tok):
    ids = tok.encode("a<|eos|>b")
    assert tok.eos_token_id in ids
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_save_from_dir_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATE and cfg["mask_token"] == "<|mask|>"
    again = DLMTokenizer.from_dir(tmp_path)
    for text in SAMPLES:
        assert again.encode(text) == tok.encode(text)
    assert again.special_ids == tok.special_ids and again.vocab_size == tok.vocab_size
    assert again.apply_chat_template(CHAT) == tok.apply_chat_template(CHAT)


def test_from_dir_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        DLMTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        DLMTokenizer.from_dir(tmp_path)


def test_custom_chat_template_survives_save(tok, tmp_path):
    custom = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    DLMTokenizer(tok.backend, chat_template=custom).save(tmp_path)
    loaded = DLMTokenizer.from_dir(tmp_path)
    assert loaded.apply_chat_template(CHAT[:1], tokenize=False) == "[system]You are terse."


def test_chat_template_format(tok):
    text = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>\nYou are terse.<|eos|>\n<|user|>\nSay hi\nplease 🙂<|eos|>\n<|assistant|>\n"
    assert tok.apply_chat_template(CHAT[:1], tokenize=False) == "<|system|>\nYou are terse.<|eos|>\n"
    assert tok.apply_chat_template(CHAT) == tok.encode(tok.apply_chat_template(CHAT, tokenize=False))


def test_sft_example_splits_prompt_and_answer(tok):
    prompt, answer = tok.sft_example(CHAT)
    assert prompt == tok.apply_chat_template(CHAT[:2], add_generation_prompt=True)
    assert tok.decode(prompt).endswith("<|assistant|>\n")
    assert answer == tok.encode("hi there") + [tok.eos_token_id]
    # together they are the full rendering minus its final newline
    full = tok.apply_chat_template(CHAT)
    assert prompt + answer == full[:-1] and tok.decode(full[-1:]) == "\n"


def test_sft_example_requires_final_assistant(tok):
    with pytest.raises(InputError) as ei:
        tok.sft_example(CHAT[:2])
    assert ei.value.field == "messages[1].role" and "assistant" in str(ei.value)
    with pytest.raises(InputError, match="messages"):
        tok.sft_example([])


@pytest.mark.parametrize(
    "messages, field",
    [
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "messages[1].role"),
        ([{"content": "a"}], "messages[0].role"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        (["hello"], "messages[0]"),
        ("hello", "messages"),
    ],
)
def test_invalid_messages_name_the_field(tok, messages, field):
    with pytest.raises(InputError) as ei:
        tok.apply_chat_template(messages)
    assert ei.value.field == field
    assert field in str(ei.value)
    if field.endswith("role"):
        assert "system, user, assistant" in str(ei.value)


def test_too_small_vocab_is_config_error():
    with pytest.raises(ConfigError) as ei:
        train_tokenizer(JSON_FILES, vocab_size=7 + 255)
    assert ei.value.field == "vocab_size" and "263" in str(ei.value)
    train_tokenizer(JSON_FILES[:1], vocab_size=263)  # the minimum works


def test_missing_or_empty_files_are_input_errors(tmp_path):
    with pytest.raises(InputError) as ei:
        train_tokenizer([tmp_path / "nope.txt"], vocab_size=300)
    assert ei.value.field == "files" and "nope.txt" in str(ei.value)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="empty"):
        train_tokenizer([tmp_path / "empty.txt"], vocab_size=300)
    with pytest.raises(InputError, match="files"):
        train_tokenizer([], vocab_size=300)


def test_decode_rejects_out_of_range_ids(tok):
    with pytest.raises(InputError, match=r"ids\[1\]"):
        tok.decode([5, 10_000])


def test_autotokenizer_loads_offline_with_identical_ids(tok_dir, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    for text in SAMPLES + [JSON_FILES[0].read_text(encoding="utf-8")]:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert hf(text)["input_ids"] == tok.encode(text)  # no BOS/EOS added by default either
        assert hf.decode(tok.encode(text)) == text
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (0, 1, 2, 3)
    assert sorted(hf.all_special_ids) == list(range(7))
    assert len(hf) == tok.vocab_size
    for gen in (False, True):
        msgs = CHAT if not gen else CHAT[:2]
        text = hf.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
        assert text == tok.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
        out = hf.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        assert list(ids) == tok.apply_chat_template(msgs, add_generation_prompt=gen)


def test_train_from_texts_learns_multiline_tokens_and_rejects_empty():
    code = "def f(x):\n    return x\n\n" * 200
    tok = train_tokenizer([], vocab_size=300, texts=[code])
    ids = tok.encode(code)
    assert tok.decode(ids) == code
    assert any(
        "\n" in tok.decode([i]) and len(tok.decode([i]).strip(" \n")) == 0 and len(tok.decode([i])) > 1
        for i in set(ids)
    )  # a newline+indent token: documents are not cut at line ends
    with pytest.raises(InputError, match="texts"):
        train_tokenizer([], vocab_size=300, texts=["", ""])
