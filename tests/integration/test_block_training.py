"""Block diffusion end to end on real text (tests/fixtures/python_corpus): a tiny causal (AR) checkpoint is
trained, converted to block diffusion with `train.init_from` + `diffusion.process=block` (the SDAR / Fast-dLLM v2
direct conversion, Dream's shifted prediction), its held-out bound falls with training, packed SFT runs, and the
saved model samples with the exact block cache exactly as without it. (Packed SFT with the block process:
tests/integration/test_sft_packing.py.)"""

import math

import dlm
from dlm.diffusion.block import BlockDiffusion
from dlm.training import Trainer, load_run_config
from tests.conftest import PYTHON_CORPUS

from .test_training import write_config

VALID = [PYTHON_CORPUS / "http" / "cookies.py.txt", PYTHON_CORPUS / "email" / "utils.py.txt"]
TRAIN = [p for p in sorted(PYTHON_CORPUS.glob("*/*.py.txt")) if p not in VALID]


def _config(tmp_path, name, **sections):
    base = dict(
        model={"d_model": 96, "n_layers": 3, "n_heads": 4, "n_kv_heads": 4},
        data={"train": [str(p) for p in TRAIN], "valid": [str(p) for p in VALID], "seq_len": 128},
        tokenizer={"vocab_size": 1024},
        train={"batch_size": 16, "max_steps": 60, "dtype": "bf16", "save_every": 0, "eval_batches": 4,
               "eval_samples": 4},
    )  # fmt: skip
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    (tmp_path / name).mkdir()
    return write_config(tmp_path / name, **base)


def test_a_causal_checkpoint_converts_to_block_diffusion_trains_and_samples_exactly(tmp_path):
    ar_cfg = _config(tmp_path, "ar", train={"objective": "ar"})
    Trainer(load_run_config(ar_cfg), log=lambda *a: None).train()
    ar_dir = tmp_path / "ar" / "run" / "final"
    assert dlm.load(ar_dir).model.config.attention == "causal"

    block_cfg = _config(
        tmp_path,
        "block",
        train={"init_from": str(ar_dir), "max_steps": 60},
        tokenizer={"path": str(ar_dir)},
        diffusion={"process": "block", "block_size": 4, "shift_logits": True},
    )
    trainer = Trainer(load_run_config(block_cfg), log=lambda *a: None)
    assert isinstance(trainer.diffusion, BlockDiffusion)
    net_cfg = trainer.objective.model_config
    assert (net_cfg.attention, net_cfg.block_size, net_cfg.shift_logits) == ("block_causal", 4, True)
    before = trainer.evaluate()["eval_ppl"]
    trainer.train()
    after = trainer.history[-1]["eval_ppl"]
    assert math.isfinite(after) and after < 0.8 * before, (before, after)

    lm = dlm.load(tmp_path / "block" / "run" / "final")
    assert lm.diffusion_config.process == "block" and lm.model.config.attention == "block_causal"
    prompts = ["def load(fp):", "import json\n\n\ndef dump(obj"]
    kw = dict(gen_length=16, steps=16, block_length=4, seed=0, temperature=0.0)
    ref = lm.generate(prompts, cache="none", **kw)
    got = lm.generate(prompts, cache="block", **kw)
    again = lm.generate(prompts, cache="block", **kw)
    assert [o.tokens for o in got] == [o.tokens for o in ref] == [o.tokens for o in again]
    fast = lm.generate(prompts, cache="block", policy="threshold", threshold=0.9, **{**kw, "steps": 16})
    assert all(o.filled.startswith(p) for o, p in zip(fast, prompts))
