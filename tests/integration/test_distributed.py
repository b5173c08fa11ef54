"""Data-parallel training for real: torchrun with 2 gloo processes on CPU against 1 process, DDP and FSDP2,
SIGKILL at any moment (also inside a checkpoint write) and exact resume, resume on another number of ranks,
LoRA SFT through PEFT on the built-in model with merge and export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dlm.errors import ConfigError
from dlm.training import Trainer, load_run_config
from dlm.training.checkpointing import list_checkpoints
from dlm.training.distributed import DistEnv
from tests.conftest import write_addition_chats

STDLIB = Path(sysconfig.get_paths()["stdlib"])
BUILTIN = Path(__file__).resolve().parents[2] / "src" / "dlm" / "builtin" / "python-diffusion"
STEPS = 8


def _config(path: Path, out: Path, **train) -> Path:
    cfg = {
        "out_dir": str(out),
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64},
        "data": {"train": [f"{STDLIB}/json/*.py"], "valid_fraction": 0.2, "seq_len": 64},
        "tokenizer": {"vocab_size": 512},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {
            "batch_size": 8,
            "max_steps": STEPS,
            "dtype": "fp32",
            "eval_every": 0,
            "eval_batches": 2,
            "save_every": 4,
            "log_every": 1,
            "progress": False,
            **train,
        },
        "generation": {"gen_length": 16, "steps": 16, "block_length": 8},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    env.pop("DLM_FAULT", None) if "DLM_FAULT" not in extra else None
    return env


def _train_cmd(cfg: Path, nproc: int, *sets: str, resume: bool = False) -> list[str]:
    if nproc == 1:
        cmd = [sys.executable, "-m", "dlm.train", str(cfg)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += ["-m", "dlm.train", str(cfg)]
    for s in sets:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def _run(cmd, check=True, **env) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return p


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_curve(a: list[dict], b: list[dict], rel: float) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["data_crc"] for r in a] == [r["data_crc"] for r in b]  # the same examples, in the same order
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=rel), (x, y)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=10 * rel), (x, y)
        if "eval_loss" in x:
            assert x["eval_loss"] == pytest.approx(y["eval_loss"], rel=rel)


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, global batch 8, 8 steps, checkpoints at 4 and 8."""
    root = tmp_path_factory.mktemp("dp")
    cfg = _config(root / "cfg.yaml", root / "one")
    _run(_train_cmd(cfg, 1))
    return root, cfg


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_give_the_one_process_loss_curve(one_process, strategy):
    root, cfg = one_process
    out = root / f"two-{strategy}"
    if strategy == "ddp":  # through the CLI shortcut, which launches torchrun
        cmd = [str(Path(sys.executable).parent / "dlm"), "train", str(cfg), "--nproc", "2"]
        cmd += ["--set", f"out_dir={out}", "--set", "train.distributed=ddp"]
        _run(cmd)
    else:
        _run(_train_cmd(cfg, 2, f"out_dir={out}", f"train.distributed={strategy}"))
    ref, got = _metrics(root / "one"), _metrics(out)
    assert len(ref) == STEPS
    _assert_same_curve(ref, got, rel=1e-5)
    _assert_same_weights(root / "one" / "final", out / "final", atol=1e-5)
    # every rank wrote its own shard; nothing pickled
    ckpt = out / "checkpoints" / f"step_{STEPS:08d}"
    shards = sorted(p.name for p in ckpt.glob("shard-*.safetensors"))
    assert len(shards) == 2 and not list(ckpt.glob("*.pt")) and not list(ckpt.glob(".metadata"))
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2


def test_two_rank_checkpoint_resumes_on_one_rank(one_process):
    root, cfg = one_process
    two = root / "two-fsdp-for-resume"
    _run(_train_cmd(cfg, 2, f"out_dir={two}", "train.distributed=fsdp"))
    one = root / "one-from-two"
    (one / "checkpoints").mkdir(parents=True)
    shutil.copytree(two / "checkpoints" / "step_00000004", one / "checkpoints" / "step_00000004")
    shutil.copytree(two / "tokenizer", one / "tokenizer")
    p = _run(_train_cmd(cfg, 1, f"out_dir={one}", "train.distributed=fsdp", resume=True))
    assert "saved by 2 ranks" in p.stdout + p.stderr
    ref = [r for r in _metrics(root / "one") if r["step"] > 4]
    _assert_same_curve(ref, _metrics(one), rel=1e-5)
    _assert_same_weights(root / "one" / "final", one / "final", atol=1e-5)


def test_kill9_inside_a_checkpoint_write_then_resume_continues_exactly(one_process):
    """Both ranks SIGKILL themselves after writing their shard of the step-8 checkpoint, before it is
    published: the step-4 checkpoint is the newest, and the resumed run redoes steps 5-8 exactly."""
    root, cfg = one_process
    ref_out, out = root / "two-ref", root / "two-killed"
    _run(_train_cmd(cfg, 2, f"out_dir={ref_out}"))
    p = _run(_train_cmd(cfg, 2, f"out_dir={out}"), check=False, DLM_FAULT="checkpoint:8")
    assert p.returncode != 0
    assert [c.name for c in list_checkpoints(out / "checkpoints")] == ["step_00000004"]
    assert (out / "checkpoints" / ".step_00000008.tmp").is_dir()  # the half-written one, never resumed
    assert not (out / "final").exists()
    _run(_train_cmd(cfg, 2, f"out_dir={out}", resume=True))
    a, b = _metrics(ref_out), _metrics(out)
    assert [(r["step"], r["loss"], r["grad_norm"], r["data_crc"]) for r in a] == [
        (r["step"], r["loss"], r["grad_norm"], r["data_crc"]) for r in b
    ]
    _assert_same_weights(ref_out / "final", out / "final", atol=0)


def test_kill9_at_a_random_moment_then_resume_continues_exactly(tmp_path):
    cfg = _config(tmp_path / "cfg.yaml", tmp_path / "ref", save_every=3)
    steps = ["train.max_steps=30"]
    _run(_train_cmd(cfg, 1, *steps))
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(cfg, 1, f"out_dir={out}", *steps), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once it is well into training (wherever it is: a step, a save)
        m = out / "metrics.jsonl"
        if m.is_file() and len(m.read_text().splitlines()) >= 14:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    ckpts = list_checkpoints(out / "checkpoints")
    assert ckpts and int(ckpts[-1].name.split("_")[1]) < 30
    for c in ckpts:  # any published checkpoint is complete
        assert {"rng.safetensors", "trainer_state.json"} <= {p.name for p in c.iterdir()}
        assert list(c.glob("shard-*.safetensors"))
    _run(_train_cmd(cfg, 1, f"out_dir={out}", *steps, resume=True))
    key = lambda r: (r["step"], r["loss"], r.get("grad_norm"), r["data_crc"])  # noqa: E731
    assert [key(r) for r in _metrics(tmp_path / "ref")] == [key(r) for r in _metrics(out)]
    _assert_same_weights(tmp_path / "ref" / "final", out / "final", atol=0)


def test_activation_checkpointing_gives_the_same_training(tmp_path):
    cfg = _config(tmp_path / "cfg.yaml", tmp_path / "plain", save_every=0)
    plain = Trainer(load_run_config(cfg, ["train.max_steps=3"]), log=lambda *a: None)
    plain.train()
    ac = Trainer(
        load_run_config(
            cfg, ["train.max_steps=3", f"out_dir={tmp_path / 'ac'}", "train.activation_checkpointing=true"]
        ),
        log=lambda *a: None,
    )
    assert any("CheckpointWrapper" in type(m).__name__ for m in ac.module.modules())
    ac.train()
    assert [r["loss"] for r in plain.history] == pytest.approx([r["loss"] for r in ac.history], rel=1e-6)
    _assert_same_weights(tmp_path / "plain" / "final", tmp_path / "ac" / "final", atol=1e-6)


def test_batch_that_does_not_split_over_ranks_is_refused(tmp_path):
    cfg = load_run_config(_config(tmp_path / "cfg.yaml", tmp_path / "x"))
    with pytest.raises(ConfigError, match="train.batch_size.*3 ranks"):
        Trainer(cfg, env=DistEnv(rank=0, world_size=3, local_rank=0))


def test_qlora_on_cpu_is_a_clear_error(tmp_path):
    cfg = _config(tmp_path / "cfg.yaml", tmp_path / "q")
    with pytest.raises(ConfigError, match="lora.quantize.*CUDA"):
        Trainer(
            load_run_config(cfg, [f"train.init_from={BUILTIN}", "lora.r=4", "lora.quantize=nf4", "train.device=cpu"])
        )
    with pytest.raises(ConfigError, match="lora.target_modules"):
        load_run_config(cfg, ["lora.target_modules=[qkv]"])


def test_lora_sft_trains_only_adapters_and_the_merged_export_generates_the_same(tmp_path):
    from peft import PeftModel

    from dlm.hub.pipeline import DiffusionLM

    write_addition_chats(tmp_path / "chat.jsonl", 300)
    cfg = {
        "out_dir": str(tmp_path / "lora"),
        "data": {"train": [str(tmp_path / "chat.jsonl")], "valid_fraction": 0.1, "seq_len": 32, "task": "sft"},
        # AdamW's eps at 1e-3 keeps the step continuous in the gradient: at 1e-8 it divides by sqrt(v), turning
        # float noise in gradients that cancel to ~0 (another summation order under FSDP) into full-size steps
        # of either sign (measured: 6e-5 apart on one machine, over 1e-3 on CI's); at 1e-3 the merged weights
        # agree to 7e-8 while LoRA moved them by ~5e-3
        "optim": {"lr": 1e-2, "warmup_steps": 2, "eps": 1e-3},
        "train": {
            "init_from": str(BUILTIN),
            "batch_size": 8,
            "max_steps": 40,
            "dtype": "fp32",
            "eval_every": 0,
            "eval_batches": 2,
            "save_every": 20,
            "progress": False,
        },
        "lora": {"r": 8, "alpha": 16},
        "generation": {"gen_length": 8, "steps": 8, "block_length": 8},
    }
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_run_config(tmp_path / "lora.yaml"), log=lambda *a: None)
    before = trainer.evaluate()["eval_loss"]
    params = dict(trainer.model.named_parameters())
    start = {k: v.detach().clone() for k, v in params.items()}
    trainable = {k for k, v in params.items() if v.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    trainer.train()
    after = trainer.history[-1]["eval_loss"]
    assert after < 0.5 * before, (before, after)  # held-out SFT loss (answers given prompts)
    changed = {k for k, v in trainer.model.named_parameters() if not torch.equal(v, start[k])}
    assert changed and changed <= trainable  # only adapter weights moved
    # checkpoints hold the adapters only (the base comes from init_from)
    ckpt = list_checkpoints(tmp_path / "lora" / "checkpoints")[-1]
    names = load_file(str(next(ckpt.glob("shard-*.safetensors")))).keys()
    assert names and all("lora_" in n for n in names)
    merged = DiffusionLM.from_pretrained(tmp_path / "lora" / "final")
    adapted = DiffusionLM.from_pretrained(BUILTIN)
    adapted.generation_config = merged.generation_config
    adapted.model = PeftModel.from_pretrained(adapted.model, str(tmp_path / "lora" / "final-adapter")).eval()
    chats = [[{"role": "user", "content": f"add {i} and {i + 1}"}] for i in (3, 50, 123, 7)]
    for settings in ({}, {"temperature": 1.0, "seed": 0}):
        a = merged.chat_batch(chats, **settings)
        b = adapted.chat_batch(chats, **settings)
        assert [c.tokens for c in a] == [c.tokens for c in b]
    assert any(c.text for c in a)


def test_compiled_training_follows_eager_training(tmp_path):
    cfg = _config(tmp_path / "cfg.yaml", tmp_path / "eager", save_every=0)
    eager = Trainer(load_run_config(cfg, ["train.max_steps=3"]), log=lambda *a: None)
    eager.train()
    comp = Trainer(
        load_run_config(cfg, ["train.max_steps=3", f"out_dir={tmp_path / 'compiled'}", "train.compile=true"]),
        log=lambda *a: None,
    )
    assert comp.forward_model is not comp.model
    comp.train()
    assert [r["loss"] for r in eager.history] == pytest.approx([r["loss"] for r in comp.history], rel=1e-3)
    assert (tmp_path / "compiled" / "final" / "model.safetensors").is_file()


def test_lora_under_fsdp_follows_the_one_process_run(tmp_path):
    write_addition_chats(tmp_path / "chat.jsonl", 200)
    cfg = {
        "out_dir": str(tmp_path / "one"),
        "data": {"train": [str(tmp_path / "chat.jsonl")], "valid_fraction": 0.1, "seq_len": 32, "task": "sft"},
        # AdamW's eps at 1e-3 keeps the step continuous in the gradient: at 1e-8 it divides by sqrt(v), turning
        # float noise in gradients that cancel to ~0 (another summation order under FSDP) into full-size steps
        # of either sign (measured: 6e-5 apart on one machine, over 1e-3 on CI's); at 1e-3 the merged weights
        # agree to 7e-8 while LoRA moved them by ~5e-3
        "optim": {"lr": 1e-2, "warmup_steps": 2, "eps": 1e-3},
        "train": {
            "init_from": str(BUILTIN),
            "batch_size": 8,
            "max_steps": 4,
            "dtype": "fp32",
            "eval_every": 0,
            "eval_batches": 1,
            "save_every": 2,
            "log_every": 1,
            "progress": False,
        },  # fmt: skip
        "lora": {"r": 4, "alpha": 8},
    }
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _run(_train_cmd(path, 1))
    _run(_train_cmd(path, 2, f"out_dir={tmp_path / 'two'}", "train.distributed=fsdp"))
    _assert_same_curve(_metrics(tmp_path / "one"), _metrics(tmp_path / "two"), rel=1e-5)
    _assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final", atol=1e-5)
    merged = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    base = load_file(str(BUILTIN / "model.safetensors"))
    moved = max((merged[k].float() - base[k].float()).abs().max().item() for k in base if k in merged)
    assert moved > 1e-3  # the comparison above is 100x finer than what training changed
    a, b = (load_file(str(tmp_path / r / "final-adapter" / "adapter_model.safetensors")) for r in ("one", "two"))
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 6  # A and B on 7 linears in each of the 6 blocks


def test_lora_on_a_llada_folder_and_export_on_demand(tmp_path):
    """LoRA SFT from a (tiny, synthetic) LLaDA folder with its own tokenizer and chat template; the run is
    killed after its step-3 checkpoint, and `dlm train --export` writes that checkpoint as a plain folder."""
    from dlm.hub.pipeline import DiffusionLM
    from tests.foreign import WORDS, write_llada, write_llada_tokenizer

    src = tmp_path / "LLaDA-tiny"
    base = write_llada(src)
    write_llada_tokenizer(src)
    w = list(WORDS)
    rows = [
        {"messages": [{"role": "user", "content": f"{a} {b}"}, {"role": "assistant", "content": f"{b} {a}"}]}
        for a in w[:16]
        for b in w[16:32]
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = {
        "out_dir": str(tmp_path / "run"),
        "data": {"train": [str(tmp_path / "chat.jsonl")], "valid_fraction": 0.1, "seq_len": 48, "task": "sft"},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "train": {
            "init_from": str(src),
            "batch_size": 8,
            "max_steps": 6,
            "dtype": "fp32",
            "eval_every": 0,
            "eval_batches": 1,
            "save_every": 3,
            "progress": False,
        },  # fmt: skip
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    }
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = _run(_train_cmd(path, 1), check=False, DLM_FAULT="checkpoint:6")
    assert p.returncode != 0 and not (tmp_path / "run" / "final").exists()
    out = tmp_path / "exported"
    p = _run([str(Path(sys.executable).parent / "dlm"), "train", str(path), "--export", str(out)])
    assert "exported step 3" in p.stdout
    merged = load_file(str(next(out.glob("*.safetensors"))))
    q = "layers.0.attn.q_proj.weight"
    assert not torch.allclose(merged[q], base["model.transformer.blocks.0.q_proj.weight"].float())  # adapters merged
    assert (tmp_path / "exported-adapter" / "adapter_model.safetensors").is_file()
    lm = DiffusionLM.from_pretrained(out)
    assert lm.model.config.mask_token_id == 90 and lm.tokenizer.eos_token_id == 91
    assert lm.chat("the a", gen_length=8, steps=8, block_length=8).tokens  # the exported folder generates
