"""`dlm quantize` (torchao int8 / int4 weights in safetensors): the folder loads through `dlm.load` and every
command, matches the in-memory quantised network bit for bit, agrees with the float model at the measured rate,
and refuses bad settings by name."""

import json
from pathlib import Path

import pytest
import torch

import dlm
from dlm.errors import CheckpointError, ConfigError
from dlm.hub.quantize import check_spec, quantize, quantize_model

from ..conftest import PYTHON_CORPUS, tiny_lm
from .test_cli import dlm as dlm_cli

PROMPTS = ["def add(a, b):", "import os\n", "class Stack:", "for i in range(10):", "    return self."]


@pytest.fixture(scope="module")
def heldout_ids():
    files = sorted(PYTHON_CORPUS.glob("**/*.py.txt"))[:4]
    text = "".join(f.read_text()[:3000] for f in files)
    return text


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quantized")
    return {
        (name, bits): quantize(name, tmp / f"{name}-{bits}", bits)
        for name in ("builtin-ar", "builtin")
        for bits in (8, 4)
    }


def _argmax_agreement(a, b, text) -> float:
    ids = torch.tensor([a.tokenizer.encode(text)[:512]])
    with torch.no_grad():
        return (a.model(ids).argmax(-1) == b.model(ids).argmax(-1)).float().mean().item()


@pytest.mark.parametrize("name", ["builtin-ar", "builtin"])
def test_quantised_builtins_agree_with_float_at_the_measured_rate(quantized, heldout_ids, name):
    """Measured at writing (teacher-forced argmax over 512 tokens of held-out CPython source; greedy 16-token
    completions of 5 prompts): int8 98.6 % / 99.2 % of tokens and 4 / 5 of completions identical (AR twin /
    diffusion); int4 (groups of 32) 84.2 % / 85.9 %, 1 / 0 of 5. Floors sit below those."""
    ref = dlm.load(name)
    int8, int4 = dlm.load(quantized[name, 8]), dlm.load(quantized[name, 4])
    assert _argmax_agreement(ref, int8, heldout_ids) >= 0.95
    assert _argmax_agreement(ref, int4, heldout_ids) >= 0.75
    same = sum(int8.generate(p, gen_length=16)[0].text == ref.generate(p, gen_length=16)[0].text for p in PROMPTS)
    assert same >= 3
    from dlm.eval import pack_texts, perplexity

    windows = pack_texts([heldout_ids], ref.tokenizer, 128, 4 * 128)
    ppl = [perplexity(lm.model, windows, diffusion_config=lm.diffusion_config, samples=2).ppl for lm in (ref, int8)]
    assert abs(ppl[1] / ppl[0] - 1) < 0.05, ppl  # the likelihood paths (a quantised head is not fused) run too
    for lm in (int8, int4):  # generates real text, all tokens in the vocabulary
        c = lm.generate(PROMPTS[0], gen_length=16)[0]
        assert c.text.strip() and all(0 <= t < lm.model.config.vocab_size for t in c.tokens)


def test_files_are_smaller_and_record_the_scheme(quantized):
    src = Path(dlm.load("builtin").path) / "model.safetensors"
    size = {b: (quantized["builtin", b] / "model.safetensors").stat().st_size for b in (8, 4)}
    assert size[4] < 0.75 * size[8] < 0.75 * src.stat().st_size  # bf16 19.8 MB -> int8 12.7 MB -> int4 8.2 MB
    cfg = json.loads((quantized["builtin", 4] / "config.json").read_text())
    assert cfg["quantization"] == {"method": "torchao", "bits": 4, "scheme": "weight_only", "group_size": 32}
    assert cfg["tie_embeddings"] is False and cfg["diffusion"]["process"] == "masked"
    assert not list(quantized["builtin", 4].glob("*.bin")) and not list(quantized["builtin", 4].glob("*.pt"))


@pytest.mark.parametrize("bits,scheme", [(8, "weight_only"), (8, "dynamic"), (4, "weight_only")])
def test_save_load_is_bit_exact(tmp_path, bits, scheme):
    """The reloaded network computes exactly what the quantised one in memory computes (int4 packing included)."""
    from dlm.hub.quantize import save_quantized
    from dlm.tokenizer import train_tokenizer

    (tmp_path / "a.txt").write_text("def f(x):\n    return x + 1\n" * 50)
    lm = tiny_lm(train_tokenizer([tmp_path / "a.txt"], vocab_size=300))
    lm.model = lm.model.float()
    cfg = lm.model.config
    spec = check_spec(bits, scheme, 32, cfg)
    quantize_model(lm.model, spec)
    out = save_quantized(lm, tmp_path / "q", spec, embed_dtype=torch.float32)
    back = dlm.load(out)
    model = lm.model
    x = torch.randint(4, cfg.vocab_size, (3, 20))
    with torch.no_grad():
        assert torch.equal(model(x), back.model(x))


def test_bad_settings_name_the_field(tmp_path, quantized):
    with pytest.raises(ConfigError, match="bits: got 3; allowed: 8, 4"):
        quantize("builtin", tmp_path / "x", 3)
    with pytest.raises(ConfigError, match="scheme: got 'fp8'"):
        quantize("builtin", tmp_path / "x", 8, scheme="fp8")
    with pytest.raises(ConfigError, match="scheme: dynamic .* needs --bits 8"):
        quantize("builtin", tmp_path / "x", 4, scheme="dynamic")
    with pytest.raises(ConfigError, match="group_size: got 48"):
        quantize("builtin", tmp_path / "x", 4, group_size=48)
    with pytest.raises(ConfigError, match="group_size: got 256; it must divide"):
        quantize("builtin", tmp_path / "x", 4, group_size=256)  # d_model 320
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notamodel"):
        quantize(tmp_path / "notamodel", tmp_path / "x", 8)
    with pytest.raises(ConfigError, match="model: .*already quantised"):
        quantize(quantized["builtin", 8], tmp_path / "x", 8)
    assert not (tmp_path / "x").exists()
    broken = tmp_path / "broken"  # a quantised folder whose weights were cut short
    broken.mkdir()
    for f in quantized["builtin", 8].iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 2] if f.name == "model.safetensors" else data)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        dlm.load(broken)


def test_cli_quantize_then_generate_and_info(tmp_path):
    out = tmp_path / "ar-int8"
    p = dlm_cli("quantize", "builtin-ar", "--bits", "8", "--out", out)
    assert "wrote 8-bit (weight_only) folder" in p.stdout
    row = json.loads(dlm_cli("generate", "--model", out, "def add(a, b):", "--gen-length", "8", "--json").stdout)
    assert row["text"].strip()
    info = json.loads(dlm_cli("info", out, "--json").stdout)
    tied = dlm.load("builtin-ar").model.config.num_parameters()  # the quantised head is untied: one more table
    assert info["parameters"] == tied + info["config"]["vocab_size"] * info["config"]["d_model"]
    bad = dlm_cli("quantize", "builtin-ar", "--bits", "2", "--out", tmp_path / "y", check=False)
    assert bad.returncode == 2 and "bits: got 2" in bad.stderr + bad.stdout
