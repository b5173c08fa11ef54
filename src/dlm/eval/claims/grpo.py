"""The claims report's diffu-GRPO section: does RL after SFT beat the same compute spent on more SFT? Read from
what `benchmarks/grpo_vs_sft.py` wrote (OUT/grpo*/grpo_vs_sft.json, one per run); every sentence follows from
its numbers."""

from __future__ import annotations

import json
from pathlib import Path

from .stats import interval

ALPHA = 0.05


def verdict(m: dict, start_right: int | None = None) -> str:
    """One sentence from a paired test `m` (McNemar: only_x = RL alone right, only_y = SFT alone right): RL
    ahead, SFT ahead (p < ALPHA) or no difference shown; `start_right` = 0 says why RL had nothing to learn."""
    counts = f"RL alone right on {m['only_x']} items, SFT alone on {m['only_y']}; exact McNemar p = {m['p']:.3g}"
    if start_right == 0:
        return (f"Not shown: the start answered none of the test items and its rollouts rarely earned a reward, so "
                f"RL had almost nothing to learn from ({counts}).")  # fmt: skip
    if m["p"] < ALPHA and m["only_x"] > m["only_y"]:
        return f"RL after SFT beats more SFT at equal compute ({counts})."
    if m["p"] < ALPHA:
        return f"More SFT beats RL after SFT at equal compute ({counts})."
    return f"No difference shown at p < {ALPHA} ({counts}): RL after SFT is not shown to beat more SFT."


def section(out: Path) -> list[str]:
    """The section's lines: one part per run of the benchmark under `out` (OUT/grpo*/grpo_vs_sft.json, by number
    of GRPO steps, then name), or none when it has not been run."""
    runs = [(json.loads(p.read_text()), p.parent.name) for p in out.glob("grpo*/grpo_vs_sft.json")]
    if not runs:
        return []
    lines = ["## RL after SFT (diffu-GRPO) vs more SFT", ""]
    for r, name in sorted(runs, key=lambda run: (run[0]["rl_settings"]["steps"], run[1])):
        lines += run_lines(r, name)
    return lines


def run_lines(r: dict, name: str) -> list[str]:
    """One run of benchmarks/grpo_vs_sft.py (its JSON) as report lines: settings, table, verdict, curves."""
    rl, sft = r["rl_settings"], r["sft"]
    command = r.get("command", "python benchmarks/grpo_vs_sft.py")
    i0, i1 = r.get("test_items", (1, r["results"]["start"]["n"]))
    scored = f"the first {i1} test items" if i0 == 1 else f"test items {i0}–{i1} (never scored before)"
    lines = [f"**{name}**: `{command}` ({r['task']}, {', '.join(r['options'])}): from one SFT diffusion model, "
             f"{rl['steps']} GRPO steps × {rl['prompts_per_step']} prompts × {rl['group_size']} rollouts at lr "
             f"{rl['lr']:.0e} ({r['rl_seconds']:.0f} s), against SFT continued from the same weights for the same "
             f"seconds ({sft['steps']} steps, {sft['examples']:,} examples at lr {sft['lr']:.1e}); {scored}, "
             f"greedy, scored for all three.", "",
             "| model | accuracy | 95 % CI |", "|---|---|---|"]  # fmt: skip
    for model, items in r["items"].items():
        k, n = sum(items), len(items)
        lo, hi = interval(k, n)
        lines.append(f"| {model} | {k}/{n} ({k / n:.1%}) | {lo:.1%}–{hi:.1%} |")
    first = verdict(r["mcnemar_rl_vs_sft"], sum(r["items"]["start"]))
    c = r.get("confirm")
    if c is None:
        lines += ["", first, ""]
    else:  # the run's settings were chosen after a look at the first items: the fresh items decide
        k = {name: sum(v) for name, v in c["correct"].items()}
        lines += ["", f"On these items (the run's settings were chosen after a look at them): {first}",
                  "", f"**Decided on fresh items**, a confirmation fixed before it ran ({c['items']}, never scored "
                  f"before): RL {k['rl']}/{c['n']} ({k['rl'] / c['n']:.1%}), SFT {k['sft']}/{c['n']} "
                  f"({k['sft'] / c['n']:.1%}). {verdict(c['mcnemar_rl_vs_sft'])}", ""]  # fmt: skip
    stage = r.get("start_stage") or {}
    start = stage.get("valid_curve") or []
    if start:
        steps = ", ".join(f"step {x['step']:,}: {x['valid_accuracy']:.1%}" for x in start)
        lines += [
            f"The start: {stage['sft_steps']:,} SFT steps on the config's schedule, then SFT at the constant rate "
            f"{stage['until_lr']:.0e} until it was right on {stage['until']:.0%} of 200 validation items "
            f"(training-split instances never in its data): {steps}.",
            "",
        ]
    curve = r["curve"]
    span = max(10, -(-len(curve) // 100) * 10)  # at most ~10 spans
    chunks = [curve[i : i + span] for i in range(0, len(curve), span)]
    lines.append(
        f"RL's training reward, mean over each span of {span} steps' rollouts: "
        + ", ".join(f"steps {c[0]['step']}–{c[-1]['step']}: {sum(x['reward'] for x in c) / len(c):.3f}" for c in chunks)
        + "."
    )
    return lines + [""]
