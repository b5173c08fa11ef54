"""Foreign tokenizer folders read without transformers give transformers' ids and chat templates; the pipeline
chats through them with the model config's special ids."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import dlm
from dlm.errors import CheckpointError, InputError
from dlm.hub import HFTokenizer
from dlm.tokenizer import DLMTokenizer

from ..foreign import write_llada, write_llada_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world, it's a test of the tokenizer's byte-level BPE; we'll see 12345 digits.\n\n  indented\tline",
    "Ünïcödé: café naïve – “quotes” 東京 \r\n end",
]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  What is the capital of France? "},
]


def test_llada_style_tokenizer_json_matches_transformers(tmp_path):
    write_llada_tokenizer(tmp_path)
    ours = HFTokenizer.from_dir(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    text = "hello world <|mdm_mask|> the capital of France"
    assert ours.encode(text) == hf(text, add_special_tokens=False).input_ids
    assert ours.encode_prompt(text) == hf(text).input_ids
    assert ours.encode("<|mdm_mask|>", parse_special=False) != ours.encode("<|mdm_mask|>")
    want = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == want
    assert want.startswith("<|startoftext|><|start_header_id|>system")  # LLaDA's template puts BOS in itself
    ids = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ours.apply_chat_template(MESSAGES, add_generation_prompt=True) == list(ids)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.mask_token_id) == (89, 91, 91, None)


def _bpe(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(TEXTS * 20, trainer)
    tok.model.save(str(tmp_path))  # vocab.json + merges.txt, as Qwen2/Dream folders ship them
    n = tok.get_vocab_size()
    added = {
        str(n + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": True}
        for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"])
    }  # fmt: skip
    return n, added


def test_dream_style_vocab_and_merges_are_rebuilt_like_qwen2(tmp_path):
    n, added = _bpe(tmp_path)
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    config = {
        "tokenizer_class": "DreamTokenizer",  # Dream's own (remote-code) class; dlm rebuilds it without that code
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "added_tokens_decoder": added,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
        "chat_template": template,
        "errors": "replace",
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = HFTokenizer.from_dir(tmp_path)
    hf = transformers.Qwen2Tokenizer.from_pretrained(str(tmp_path))  # the class Dream's tokenizer copies
    for text in TEXTS + ["<|im_start|>user\nhi<|im_end|><|mask|><|mask|>"]:
        assert ours.encode(text) == hf(text, add_special_tokens=False).input_ids, text
        assert ours.decode(ours.encode(text)) == text
    assert (ours.mask_token_id, ours.eos_token_id) == (n + 3, n)
    chat = ours.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|im_end|>\n<|im_start|>assistant\n")

    # saved as a plain tokenizer.json folder that transformers loads without remote code
    ours.save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in saved
    back = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert back(TEXTS[1], add_special_tokens=False).input_ids == ours.encode(TEXTS[1])
    assert HFTokenizer.from_dir(tmp_path / "saved").apply_chat_template(MESSAGES, tokenize=False) == (
        ours.apply_chat_template(MESSAGES, tokenize=False)
    )


def test_tokenizer_folders_without_a_usable_tokenizer_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer.json: missing"):
        HFTokenizer.from_dir(tmp_path)
    _bpe(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    with pytest.raises(CheckpointError, match="not tokenizer_class 'LlamaTokenizer'"):
        HFTokenizer.from_dir(tmp_path)
    write_llada_tokenizer(tmp_path / "nochat")
    cfg = json.loads((tmp_path / "nochat" / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    (tmp_path / "nochat" / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="no chat template"):
        HFTokenizer.from_dir(tmp_path / "nochat").apply_chat_template(MESSAGES)


def test_llada_folder_chats_through_its_template_with_the_model_configs_mask_id(tmp_path):
    write_llada(tmp_path)
    write_llada_tokenizer(tmp_path)
    lm = dlm.load(tmp_path, dtype="fp32")
    tok = lm.tokenizer
    assert isinstance(tok, HFTokenizer)
    assert (tok.mask_token_id, tok.eos_token_id, tok.bos_token_id) == (90, 91, 89)  # mask id from config.json
    assert lm.generation_config.block_length == 32 and lm.generation_config.policy == "low_confidence"
    c = lm.chat("hello world", gen_length=8, steps=8, block_length=8)
    assert c.prompt.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>")
    assert 0 < c.nfe <= 8 and 90 not in c.tokens
    # "<|mdm_mask|>" in a prompt is a hole the sampler fills in place
    out = lm.generate("the <|mdm_mask|> of France", gen_length=8, steps=8, block_length=8)[0]
    assert "<|mdm_mask|>" not in out.filled and out.filled.startswith("the ")


def test_dlm_folders_keep_dlm_tokenizers(tmp_path):
    from dlm.tokenizer import train_tokenizer

    from ..conftest import tiny_lm

    tok = train_tokenizer([], 300, texts=["hello world " * 50])
    lm = tiny_lm(tok)
    lm.save_pretrained(tmp_path / "m")
    back = dlm.load(tmp_path / "m")
    assert isinstance(back.tokenizer, DLMTokenizer)
    x = torch.randint(0, tok.vocab_size, (1, 7))
    assert torch.equal(back.model(x), lm.model(x))
