"""Does RL after SFT beat the same compute spent on more SFT? (issue 17: diffu-GRPO, d1 arXiv 2504.12216)

From one SFT diffusion model (`--start`; by default one trained here first: the task's diffusion config on
`--train-n` training examples of the chosen task options for `--sft-steps` steps):
  1. RL arm: `train_grpo` on the task's training split with the settings below (fixed before any run), timed.
  2. SFT arm: the same run config continued from the same weights at a constant learning rate (the SFT
     schedule's final rate), in chunks of 10 steps until it has used as many wall seconds as the RL arm:
     compute matched by seconds on this machine, in this process.
  3. Both, and the start, answer the first N test items greedily (the task's default decoding); per item
     right/wrong, paired: an exact McNemar test of RL vs SFT. The RL reward curve is kept.
Writes OUT/grpo_vs_sft.json and OUT/grpo_vs_sft.md (the table and the curve, one row per 10 RL steps); the
models go under --runs, outside the checkout.

    python benchmarks/grpo_vs_sft.py [--task arithmetic --option digits=3 --option ops=+] [--out reports/grpo]

Pre-registered (before any run): 3-digit addition, where the SFT model is right often enough for the verifier's
reward to vary within a group (4-digit + and * gave the head-to-head's diffusion twin 0 of 200: no signal).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dlm  # noqa: E402
from dlm.cli.tasks import make_task  # noqa: E402
from dlm.eval.claims import stats  # noqa: E402
from dlm.tasks import evaluate, write_sft  # noqa: E402
from dlm.training import Trainer, load_run_config  # noqa: E402
from dlm.training.grpo import GRPOConfig, train_grpo  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Pre-registered RL settings (chosen before the first run; not tuned on the test split).
RL = dict(steps=60, prompts_per_step=4, group_size=8, inner_steps=2, prompt_mask_prob=0.15, clip_eps=0.2,
          beta=0.04, lr=5e-5, temperature=1.0, seed=0)  # fmt: skip


def sft_for_seconds(config: str, start: str, out: Path, seconds: float) -> dict:
    """Continue SFT from `start` at the schedule's final learning rate until `seconds` of wall time are used."""
    base = load_run_config(config, [])
    lr = base.optim.lr * base.optim.min_lr_ratio
    cfg = load_run_config(config, [f"out_dir={out}", f"train.init_from={start}", f"optim.lr={lr}",
                                   "optim.warmup_steps=0", "optim.min_lr_ratio=1.0", "train.max_steps=100000",
                                   "train.eval_every=0", "train.save_every=0", "train.compile=false",
                                   "train.progress=false"])  # fmt: skip
    trainer = Trainer(cfg, log=lambda *a: None)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        trainer.train(max_steps=trainer.step + 10)
    used = time.perf_counter() - t0
    trainer.export(out / "final")
    return {"steps": trainer.step, "seconds": used, "lr": lr, "examples": trainer.step * cfg.train.batch_size}


def train_start(task, config: str, run: Path, n: int, steps: int) -> Path:
    """The SFT start model: `n` training examples of `task` and `steps` steps of `config` (resumes)."""
    if (run / "final" / "model.safetensors").is_file():
        return run / "final"
    data = run / "train.jsonl"
    if not data.is_file():
        write_sft(task, "train", n, data)
    cfg = load_run_config(config, [f"out_dir={run}", f"data.train=[{data}]", f"train.max_steps={steps}",
                                   "train.progress=false"])  # fmt: skip
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.resume()
    trainer.train()
    return run / "final"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--option", action="append", default=None, help="task option key=value (as `dlm eval task`)")
    p.add_argument("--start", default=None, help="SFT model folder (default: train one into OUT/start)")
    p.add_argument("--train-n", type=int, default=50_000, help="training examples for the SFT start")
    p.add_argument("--sft-steps", type=int, default=1000, help="SFT steps of the start model")
    p.add_argument("--config", default=None, help="its run config (default: the task's diffusion config)")
    p.add_argument("-n", type=int, default=200, help="test items")
    p.add_argument("--out", default="reports/grpo", help="the report (grpo_vs_sft.md / .json)")
    p.add_argument("--runs", default=None, help="models and their runs (default ~/dlm-runs/grpo: outside the checkout)")
    p.add_argument("--smoke", action="store_true", help="a tiny run of every stage (results meaningless)")
    a = p.parse_args(argv)
    rl_settings = dict(RL)
    if a.smoke:
        a.train_n, a.sft_steps, a.n = 256, 10, 10
        rl_settings.update(steps=2, prompts_per_step=2, group_size=2, inner_steps=1)
    if a.option is None:
        a.option = ["digits=3", "ops=+"] if a.task == "arithmetic" else []
    config = a.config or str(ROOT / f"examples/configs/tasks/{a.task}-diffusion.yaml")
    report_dir = Path(a.out)
    report_dir.mkdir(parents=True, exist_ok=True)
    out = Path(a.runs or Path.home() / "dlm-runs" / "grpo")
    out.mkdir(parents=True, exist_ok=True)
    task = make_task(a.task, a.option)
    test = task.examples("test", a.n)
    start = a.start or str(train_start(task, config, out / "start", a.train_n, a.sft_steps))

    t0 = time.perf_counter()
    rl_lm = dlm.load(start)
    rl = train_grpo(rl_lm, task, GRPOConfig(**rl_settings), out / "rl", log=lambda m: print(m, flush=True))
    rl_seconds = time.perf_counter() - t0
    sft = sft_for_seconds(config, start, out / "sft", rl_seconds)

    results = {}
    for name, folder in (("start", start), ("rl", out / "rl"), ("sft", out / "sft" / "final")):
        r = evaluate(dlm.load(str(folder)), task, test, batch_size=25)
        results[name] = {k: r[k] for k in ("n", "accuracy", "nfe_mean", "seconds", "items")}
    correct = {k: [it["correct"] for it in v["items"]] for k, v in results.items()}
    test_rl_sft = stats.mcnemar(correct["rl"], correct["sft"])
    curve = [{"step": h["step"], "reward": h["reward"]} for h in rl["history"]]
    report = {"task": a.task, "options": a.option, "start": start, "rl_settings": rl_settings, "rl_seconds": rl_seconds,
              "sft": sft, "results": {k: {kk: vv for kk, vv in v.items() if kk != "items"} for k, v in results.items()},
              "items": correct, "mcnemar_rl_vs_sft": test_rl_sft, "curve": curve}  # fmt: skip
    (report_dir / "grpo_vs_sft.json").write_text(json.dumps(report, indent=1))
    lines = [f"# diffu-GRPO vs more SFT at equal compute ({a.task}, {a.n} test items)", "",
             f"Start: `{start}`. RL: {rl_settings['steps']} steps × {rl_settings['prompts_per_step']} prompts × "
             f"{rl_settings['group_size']} "
             f"rollouts, {rl_seconds:.0f} s. SFT: {sft['steps']} more steps ({sft['examples']} examples) at lr "
             f"{sft['lr']:.1e}, {sft['seconds']:.0f} s.", "",
             "| model | accuracy | 95% CI | mean NFE |", "|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        k = sum(correct[name])
        lo, hi = stats.interval(k, r["n"])
        lines.append(f"| {name} | {r['accuracy']:.1%} ({k}/{r['n']}) | {lo:.1%}–{hi:.1%} | {r['nfe_mean']:.1f} |")
    m = test_rl_sft
    lines += ["", f"RL vs SFT, exact McNemar on the same items: RL alone right on {m['only_x']}, SFT alone on "
              f"{m['only_y']}, p = {m['p']:.3g}.", "", "RL training reward (mean over each step's rollouts):", "",
              "| steps | mean reward |", "|---|---|"]  # fmt: skip
    for i in range(0, len(curve), 10):
        chunk = curve[i : i + 10]
        lines.append(f"| {chunk[0]['step']}–{chunk[-1]['step']} | {sum(c['reward'] for c in chunk) / len(chunk):.3f} |")
    (report_dir / "grpo_vs_sft.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
