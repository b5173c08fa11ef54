"""The built-in models' configs (issue 3): within the size limits, and twins in everything but attention."""

from pathlib import Path

from dlm.configs import to_dict
from dlm.training import load_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def test_builtin_configs_are_twins_within_the_size_limits():
    diff = load_run_config(CONFIGS / "builtin-diffusion.yaml")
    ar = load_run_config(CONFIGS / "builtin-ar.yaml")
    for cfg in (diff, ar):
        n = cfg.model.num_parameters()
        assert n <= 10_000_000 and 2 * n <= 20_000_000  # <= ~10M parameters, <= 20 MB in bf16
    assert diff.model.attention == "bidirectional" and diff.train.objective == "diffusion"
    assert ar.model.attention == "causal" and ar.train.objective == "ar"
    a, b = to_dict(diff), to_dict(ar)
    for section in ("data", "tokenizer", "optim"):
        assert a[section] == b[section]
    a["model"].pop("attention"), b["model"].pop("attention")
    a["train"].pop("objective"), b["train"].pop("objective")
    assert a["model"] == b["model"] and a["train"] == b["train"]


def test_the_uniform_config_is_the_diffusion_config_with_the_uniform_process():
    diff = to_dict(load_run_config(CONFIGS / "builtin-diffusion.yaml"))
    uni = to_dict(load_run_config(CONFIGS / "builtin-uniform.yaml"))
    assert uni["diffusion"].pop("process") == "uniform" and diff["diffusion"].pop("process") == "masked"
    assert uni.pop("out_dir") == "runs/builtin-uniform" and diff.pop("out_dir") == "runs/builtin-diffusion"
    assert uni["tokenizer"].pop("path") == "src/dlm/builtin/python-diffusion"
    diff["tokenizer"].pop("path")
    assert uni == diff


def test_every_example_config_loads():
    from dlm.training import load_run_config

    paths = sorted(CONFIGS.rglob("*.yaml"))
    assert len(paths) >= 10
    for p in paths:
        cfg = load_run_config(p)
        assert cfg.out_dir.startswith("runs/"), p
    lora = load_run_config(CONFIGS / "lora-sft.yaml")
    assert lora.lora.enabled and lora.train.init_from and lora.data.task == "sft"
