"""SFT packing (data.pack): several chat examples per row, each attending only to itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from dlm.errors import ConfigError
from dlm.model import ModelConfig, Transformer
from dlm.tokenizer import DLMTokenizer
from dlm.training import Trainer, load_run_config
from dlm.training.data import DataConfig, PackedSFTDataset, build_dataset
from dlm.training.trainer import Segmented
from tests.conftest import write_addition_chats

BUILTIN = Path(__file__).resolve().parents[2] / "src" / "dlm" / "builtin" / "python-diffusion"


def test_packed_rows_hold_every_example_once_unsplit(tmp_path):
    tok = DLMTokenizer.from_dir(BUILTIN)
    cfg = DataConfig(
        train=[str(write_addition_chats(tmp_path / "c.jsonl"))], task="sft", seq_len=64, valid_fraction=0.0, pack=True
    )
    packed, _ = build_dataset(cfg, tok, tmp_path / "cache")
    plain, _ = build_dataset(DataConfig(**{**cfg.__dict__, "pack": False}), tok, tmp_path / "cache")
    assert isinstance(packed, PackedSFTDataset) and packed.num_examples == len(plain) == 300
    assert len(packed) < len(plain) / 2  # ~20-token examples, several per 64-token row
    assert sorted(i for r in packed.rows for i in r) == list(range(300))
    b = packed.batch(list(range(len(packed))))
    for row, members in enumerate(packed.rows):
        seg, pos, ans, ids = b["segment_ids"][row], b["position_ids"][row], b["answer_mask"][row], b["input_ids"][row]
        at = 0
        for k, i in enumerate(members):  # each example intact: its tokens, positions from 0, its answer marked
            n, p = int(packed.lengths[i]), int(packed.prompt_lengths[i])
            alone = plain.batch([i])["input_ids"][0]
            assert torch.equal(ids[at : at + n], alone[:n]) and int(alone[n - 1]) == tok.eos_token_id
            assert (seg[at : at + n] == k).all() and torch.equal(pos[at : at + n], torch.arange(n))
            assert not ans[at : at + p].any() and ans[at + p : at + n].all()
            at += n
        assert (ids[at:] == tok.eos_token_id).all() and ans[at:].all()  # padding: the last answer's EOS run
    with pytest.raises(ConfigError, match="data.pack"):
        DataConfig(train=["x"], task="pretrain", pack=True)


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_a_packed_example_sees_only_itself(attention):
    torch.manual_seed(0)
    net = Transformer(
        ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32, attention=attention)
    )
    a, b = torch.randint(0, 64, (7,)), torch.randint(0, 64, (9,))
    row = torch.cat([a, b])[None]
    seg = torch.tensor([[0] * 7 + [1] * 9])
    pos = torch.cat([torch.arange(7), torch.arange(9)])[None]
    packed = Segmented(net, seg, pos, causal=attention == "causal")(row)
    torch.testing.assert_close(packed[0, :7], net(a[None])[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(packed[0, 7:], net(b[None])[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("objective", ["diffusion", "ar", "block"])
def test_packed_sft_training_lowers_heldout_answer_loss(tmp_path, objective):
    """`block`: the block-diffusion process (its per-block levels and two streams follow each packed example's
    own positions)."""
    process = {"process": "block", "block_size": 8} if objective == "block" else {}
    objective = "diffusion" if objective == "block" else objective
    cfg = {
        "out_dir": str(tmp_path / "run"),
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 64},
        "data": {
            "train": [str(write_addition_chats(tmp_path / "c.jsonl"))],
            "task": "sft",
            "seq_len": 64,
            "valid_fraction": 0.1,
            "pack": True,
        },  # fmt: skip
        "tokenizer": {"path": str(BUILTIN)},
        "diffusion": process,
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {
            "objective": objective,
            "batch_size": 8,
            "max_steps": 40,
            "dtype": "fp32",
            "eval_every": 0,
            "eval_batches": 4,
            "save_every": 0,
            "progress": False,
        },  # fmt: skip
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_run_config(tmp_path / "cfg.yaml"), log=lambda *a: None)
    assert isinstance(trainer.train_data, PackedSFTDataset)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.history[-1]
    assert after["eval_loss"] < 0.6 * before["eval_loss"], (before, after)
    assert after["eval_tokens"] == before["eval_tokens"] < 4 * 8 * 64  # answers only, not whole rows
