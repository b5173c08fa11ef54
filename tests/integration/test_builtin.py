"""The built-in models shipped inside the package (issue 3): they load, they are the twins the model card says,
generation with them is deterministic under a seed and batch-invariant, and the CLI uses them by default with
the network cut (`unshare -n`)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from dlm import load
from dlm.builtin import BUILTIN_MODELS, DEFAULT_DIFFUSION_MODEL, DEFAULT_MODEL, builtin_path, resolve_model_path
from dlm.hub.checkpoint import load_model_config

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DLM_SHOW_STEPS_DELAY": "0"}
PROMPTS = ["def fibonacci(n):", "import os\n\n\ndef read_lines(path):", "class Stack:\n    def push(self, item):"]


def _net_cut_prefix() -> list[str]:
    """`unshare -n` (a new, empty network namespace) where the machine allows it; HF_HUB_OFFLINE=1 always."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"]
    return []


def dlm(*args):
    p = subprocess.run(
        [*_net_cut_prefix(), sys.executable, "-m", "dlm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert p.returncode == 0, f"dlm {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module", params=["builtin", "builtin-ar", "builtin-block"])
def lm(request):
    return load(request.param)


def test_names_resolve_to_package_folders():
    assert DEFAULT_MODEL == "builtin-draft" and DEFAULT_DIFFUSION_MODEL == "builtin"
    assert resolve_model_path("builtin") == resolve_model_path("builtin-diffusion") == builtin_path("builtin")
    assert resolve_model_path("builtin-ar").name == "python-ar"
    for name in BUILTIN_MODELS:
        assert (builtin_path(name) / "config.json").is_file(), name


def test_existing_folder_wins_over_builtin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "builtin").mkdir()
    assert resolve_model_path("builtin") == tmp_path.joinpath("builtin").relative_to(tmp_path)


def test_shipped_weights_are_small_bf16_twins():
    diff, ar = builtin_path("builtin"), builtin_path("builtin-ar")
    cfgs = {}
    for folder in (diff, ar):
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        assert size <= 20_000_000, f"{folder}: {size} bytes of weights"
        with safe_open(str(folder / "model.safetensors"), "pt") as fh:
            dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
            n_params = sum(_numel(fh.get_slice(k).get_shape()) for k in fh.keys())
        assert dtypes == {"BF16"}
        assert n_params <= 10_500_000
        cfgs[folder.name] = json.loads((folder / "config.json").read_text())
    a, b = cfgs["python-diffusion"], cfgs["python-ar"]
    assert a.pop("attention") == "bidirectional" and b.pop("attention") == "causal"
    a.pop("diffusion", None), b.pop("diffusion", None)
    assert a == b, "the twins differ in more than attention"
    assert (diff / "tokenizer.json").read_bytes() == (ar / "tokenizer.json").read_bytes()
    sa = json.loads((diff / "training_summary.json").read_text())
    sb = json.loads((ar / "training_summary.json").read_text())
    assert sa["objective"] == "diffusion" and sb["objective"] == "ar"
    assert sa["tokens"] == sb["tokens"], "same token budget"


def test_block_model_is_the_ar_twin_converted():
    """builtin-block (issue 15): the AR twin's network with block-causal attention (blocks of 4) and Dream's shifted
    prediction, fine-tuned with the block process; same tokenizer; small bf16 weights; sampled with the exact
    block cache by default."""
    block, ar = builtin_path("builtin-block"), builtin_path("builtin-ar")
    assert sum(f.stat().st_size for f in block.glob("*.safetensors")) <= 20_000_000
    with safe_open(str(block / "model.safetensors"), "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}
    a, b = json.loads((block / "config.json").read_text()), json.loads((ar / "config.json").read_text())
    assert (a.pop("attention"), a.pop("block_size"), a.pop("shift_logits")) == ("block_causal", 4, True)
    assert a.pop("diffusion")["process"] == "block"
    for k in ("attention", "block_size", "shift_logits", "diffusion"):
        b.pop(k)
    assert a == b, "the block model differs from its AR twin in more than attention and prediction shift"
    assert (block / "tokenizer.json").read_bytes() == (ar / "tokenizer.json").read_bytes()
    summary = json.loads((block / "training_summary.json").read_text())
    assert summary["objective"] == "diffusion" and summary["run_config"]["train"]["init_from"].endswith("python-ar")
    gen = json.loads((block / "generation_config.json").read_text())
    assert (gen["cache"], gen["block_length"]) == ("block", 4)
    total = sum(f.stat().st_size for f in builtin_path("builtin").parent.rglob("*.safetensors"))
    assert total <= 80_000_000, f"{total} bytes of shipped weights in all"


def test_draft_model_is_the_ar_twin_plus_a_small_drafting_adapter():
    """builtin-draft (issue 16): a bf16 LoRA adapter over builtin-ar (the same network, causal), trained with the
    draft_verify objective; its generation_config turns on self-speculative decoding, which gives the text of its
    one-token-per-forward decoding, alone and batched, in fewer forwards (1.7 tokens per forward on held-out
    signatures at shipping; the bare AR twin drafting with its untrained mask slots gets 1.06)."""
    folder, ar = builtin_path("builtin-draft"), builtin_path("builtin-ar")
    assert not (folder / "model.safetensors").exists()
    weights = folder / "adapter_model.safetensors"
    assert weights.stat().st_size <= 2_000_000
    with safe_open(str(weights), "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}
        assert all("lora_" in k for k in fh.keys())
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "builtin-ar"
    assert load_model_config(folder)[0] == load_model_config(ar)[0], "the drafting model is the AR twin's network"
    assert json.loads((folder / "generation_config.json").read_text())["draft_block"] == 2
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["objective"] == "draft_verify" and summary["run_config"]["train"]["init_from"] == "builtin-ar"
    lm = load("builtin-draft")
    assert lm.generation_config.draft_block == 2 and lm.model.config.attention == "causal"
    drafted = lm.generate(PROMPTS, gen_length=48)
    alone = [lm.generate([p], gen_length=48)[0] for p in PROMPTS]
    one = lm.generate(PROMPTS, gen_length=48, draft_block=0)
    assert [c.tokens for c in drafted] == [c.tokens for c in alone] == [c.tokens for c in one]
    assert [c.nfe for c in drafted] == [c.nfe for c in alone]
    tokens, forwards = sum(len(c.tokens) for c in drafted), sum(c.nfe for c in drafted)
    assert tokens / forwards > 1.4, (tokens, forwards)
    assert all(c.nfe == len(c.tokens) for c in one)


def test_block_model_cache_is_exact_on_the_shipped_weights():
    """The exact block cache gives the uncached tokens on the real model, greedy and sampled, batched."""
    lm = load("builtin-block")
    for kw in (dict(gen_length=32, temperature=0.0), dict(gen_length=32, temperature=0.8, seed=3)):
        cached = [o.tokens for o in lm.generate(PROMPTS, cache="block", **kw)]
        plain = [o.tokens for o in lm.generate(PROMPTS, cache="none", **kw)]
        assert cached == plain, kw


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_loads_with_its_tokenizer_and_settings(lm):
    cfg = lm.model.config
    assert next(lm.model.parameters()).dtype == torch.float32  # stored bf16, computed in fp32 on CPU
    assert cfg.mask_token_id == lm.tokenizer.mask_token_id and cfg.eos_token_id == lm.tokenizer.eos_token_id
    assert lm.is_causal == (cfg.attention == "causal")
    lm.generation_config.validate()


def test_seeded_generation_is_deterministic(lm):
    kw = dict(gen_length=32, temperature=0.8, seed=1234)
    a = [o.tokens for o in lm.generate(PROMPTS, **kw)]
    b = [o.tokens for o in lm.generate(PROMPTS, **kw)]
    assert a == b
    c = [o.tokens for o in lm.generate(PROMPTS, **{**kw, "seed": 99})]
    assert c != a, "the seed has no effect"


def test_batch_gives_what_each_prompt_gives_alone(lm):
    for kw in (dict(gen_length=32, temperature=0.0), dict(gen_length=32, temperature=0.8, seed=5)):
        batch = [o.tokens for o in lm.generate(PROMPTS, **kw)]
        alone = [lm.generate(p, **kw)[0].tokens for p in PROMPTS]
        assert batch == alone, kw


def test_diffusion_model_writes_python():
    """Not a quality bar (the model card has those numbers): the greedy default completion is code-like text,
    not a run of one token."""
    lm = load("builtin")
    text = lm.generate("def fibonacci(n):", seed=0)[0].text
    assert len(set(text.split())) >= 5, text


def test_cli_uses_builtin_by_default_offline():
    """Writing defaults to builtin-draft (drafting: fewer forwards than tokens), infilling to the diffusion model
    (it sees the suffix)."""
    p = dlm("generate", "def fibonacci(n):", "--gen-length", "32", "--seed", "0", "--json")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["tokens"] > 0 and out["text"] and out["nfe"] < out["tokens"]
    expect = load("builtin-draft").generate("def fibonacci(n):", gen_length=32, seed=0)[0].text
    assert out["text"] == expect

    p = dlm("infill", "--prefix", "def add(a, b):\n    return ", "--suffix", "\n", "--length", "4", "--json")
    fill = json.loads(p.stdout.strip().splitlines()[-1])
    assert fill["text"].strip(), fill
    assert fill["text"] == load("builtin").infill("def add(a, b):\n    return ", "\n", length=4).text

    p = dlm("generate", "def fibonacci(n):", "--model", "builtin-ar", "--gen-length", "16", "--json")
    assert json.loads(p.stdout.strip().splitlines()[-1])["tokens"] > 0

    p = dlm("info", "--json")
    info = json.loads(p.stdout)
    assert info["config"]["attention"] == "causal" and info["parameters"] <= 10_500_000
