"""Objectives through the Trainer: a new objective is one class and a registration (no trainer edit), and a
packed block-causal SFT batch trains each example with its own blocks (not bidirectionally)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from dlm.model import ModelConfig, Transformer
from dlm.training import Trainer, load_run_config
from dlm.training.module import Segmented
from dlm.training.objectives import OBJECTIVES, Autoregressive, register_objective
from tests.conftest import write_addition_chats
from tests.unit.test_masks import brute_force

BUILTIN = Path(__file__).resolve().parents[2] / "src" / "dlm" / "builtin" / "python-diffusion"


def sft_config(tmp_path, objective="diffusion", attention="bidirectional", pack=True, **train):
    cfg = {
        "out_dir": str(tmp_path / "run"),
        "model": {
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "max_seq_len": 64,
            "attention": attention,
            "block_size": 4,
        },
        "data": {
            "train": [str(write_addition_chats(tmp_path / "c.jsonl"))],
            "task": "sft",
            "seq_len": 64,
            "valid_fraction": 0.1,
            "pack": pack,
        },
        "tokenizer": {"path": str(BUILTIN)},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {
            "objective": objective,
            "batch_size": 4,
            "max_steps": 3,
            "dtype": "fp32",
            "eval_every": 0,
            "eval_batches": 2,
            "save_every": 0,
            "progress": False,
            **train,
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return load_run_config(tmp_path / "cfg.yaml")


def test_a_registered_objective_trains_evaluates_and_exports(tmp_path):
    @register_objective
    class SmoothedAR(Autoregressive):  # label-smoothed next-token CE; NLL and scored tokens as the AR twin's
        name = "ar-smoothed-test"

        def loss(self, net, batch, generator=None, shard=(0, 1), normalizer=None):
            ids = batch["input_ids"]
            logits = net(ids)[:, :-1].float()
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), label_smoothing=0.1)

    try:
        trainer = Trainer(sft_config(tmp_path, "ar-smoothed-test", pack=False), log=lambda *a: None)
        assert isinstance(trainer.objective, SmoothedAR) and trainer.model_config.attention == "causal"
        trainer.train()
        last = trainer.history[-1]
        assert len(trainer.history) == 3 and torch.isfinite(torch.tensor(last["eval_loss"]))
        assert (Path(trainer.cfg.out_dir) / "final" / "model.safetensors").is_file()
    finally:
        OBJECTIVES.pop("ar-smoothed-test")


def test_a_packed_block_causal_example_sees_only_itself_with_its_own_blocks():
    """Packed, each example's outputs are those it has alone: block boundaries counted from its own position 0
    (the second example starts at slot 7, inside a block of the row)."""
    torch.manual_seed(0)
    net = Transformer(
        ModelConfig(
            vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32, attention="block_causal", block_size=4
        )
    )
    a, b = torch.randint(0, 64, (7,)), torch.randint(0, 64, (9,))
    row = torch.cat([a, b])[None]
    seg = torch.tensor([[0] * 7 + [1] * 9])
    pos = torch.cat([torch.arange(7), torch.arange(9)])[None]
    with torch.no_grad():
        packed = Segmented(net, seg, pos)(row)  # the network's own attention kind and block size
        torch.testing.assert_close(packed[0, :7], net(a[None])[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(packed[0, 7:], net(b[None])[0], rtol=0, atol=1e-5)
        bidirectional = Segmented(net, seg, pos, "bidirectional")(row)
        assert not torch.allclose(bidirectional[0, 7:], net(b[None])[0], atol=1e-3)  # what packing used to do


@pytest.mark.parametrize("objective, attention", [("diffusion", "block_causal"), ("ar", "causal")])
def test_trainer_gives_packed_batches_the_brute_force_mask(tmp_path, objective, attention):
    trainer = Trainer(sft_config(tmp_path, objective, attention), log=lambda *a: None)
    assert trainer.model_config.attention == attention
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["attention_mask"]), with_kwargs=True)
    batch = trainer.train_data.batch([0, 1])
    trainer.compute_loss(batch)
    seg, pos = batch["segment_ids"], batch["position_ids"]
    assert seg.max() > 0  # several examples per row
    want = brute_force(attention, 2, 64, torch.arange(64)[None], None, seg, pos, block=4)
    assert len(seen) == 1 and torch.equal(seen[0].expand_as(want), want)
