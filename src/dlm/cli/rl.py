"""`dlm rl`: diffu-GRPO on a task suite after SFT (dlm.training.grpo)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from ..builtin import DEFAULT_DIFFUSION_MODEL
from .common import app, device_option, echo_json, load_model, model_option
from .tasks import TASK_HELP, make_task, task_option


@app.command("rl")
def rl(
    task: str = typer.Argument(..., help=TASK_HELP),
    model: str = model_option(DEFAULT_DIFFUSION_MODEL),
    out: Path = typer.Option(..., "--out", help="Folder for the trained model and grpo_history.json."),
    option: List[str] = task_option(),
    steps: int = typer.Option(50, "--steps", help="Outer steps (one batch of rollouts each)."),
    prompts_per_step: int = typer.Option(4, "--prompts-per-step"),
    group_size: int = typer.Option(8, "--group-size", help="Completions per prompt."),
    inner_steps: int = typer.Option(2, "--inner-steps", help="Updates per batch of rollouts (fresh prompt mask each)."),
    prompt_mask_prob: float = typer.Option(0.15, "--prompt-mask-prob"),
    clip_eps: float = typer.Option(0.2, "--clip-eps"),
    beta: float = typer.Option(0.04, "--beta", help="KL weight against the model before RL."),
    lr: float = typer.Option(1e-5, "--lr"),
    temperature: float = typer.Option(1.0, "--temperature", help="Rollout sampling temperature."),
    seed: int = typer.Option(0, "--seed"),
    device: str = device_option(),
):
    """Reinforcement learning with the task's verifier as reward (d1's diffu-GRPO) on its training split."""
    from ..training.grpo import GRPOConfig, train_grpo

    cfg = GRPOConfig(steps=steps, prompts_per_step=prompts_per_step, group_size=group_size, inner_steps=inner_steps,
                     prompt_mask_prob=prompt_mask_prob, clip_eps=clip_eps, beta=beta, lr=lr,
                     temperature=temperature, seed=seed)  # fmt: skip
    t = make_task(task, option)
    lm = load_model(model, "fp32", device)
    res = train_grpo(lm, t, cfg, out, log=lambda m: typer.echo(m, err=True))
    echo_json({"out": str(out), "steps": len(res["history"]), "final_reward": res["history"][-1]["reward"]})
