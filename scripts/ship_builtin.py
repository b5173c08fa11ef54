"""Copy a finished training run into the package as a built-in model (bf16 safetensors + JSON).

    python scripts/ship_builtin.py runs/builtin-diffusion python-diffusion
    python scripts/ship_builtin.py runs/builtin-ar python-ar
    python scripts/ship_builtin.py runs/smollm2-diffusion smollm2-diffusion --adapter

With --adapter the run's final-adapter/ is shipped instead (a LoRA run over a base that setup installs): the
adapter folder as the trainer wrote it (it names its base and loads by itself, see `dlm.hub.adapters`), its
weights cast to bf16, PEFT's generated README.md left out.

Writes src/dlm/builtin/NAME/ (config, weights in bf16, tokenizer, generation_config from the run) and
training_summary.json: tokens seen, optimizer steps, step time, final train loss, held-out eval history,
read from the run's metrics.jsonl (a resumed run appends; the last record of each step wins); a run that
started from train.init_from also keeps that model's own training_summary.json under "continued_from". Then choose the
sampling defaults with `python benchmarks/choose_generation.py --model builtin[-ar] --write`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dlm.builtin import HERE
from dlm.eval.claims.measuring import loss_curve, read_metrics
from dlm.hub import load

LIMIT_BYTES = 20_000_000  # issue 3: <= 20 MB on disk


def summarize(run: Path) -> dict:
    recs = read_metrics(run / "metrics.jsonl")
    cfg = json.loads((run / "run_config.json").read_text())
    if cfg["train"].get("init_from"):  # the trainer ignored this section: do not ship defaults as if they were used
        cfg["model"] = "not used: the network came from train.init_from (its shape is in config.json)"
    log_every = cfg["train"]["log_every"]
    tokens_per_step = recs[-1]["tokens"] / recs[-1]["step"]
    # each tok_s covers the log_every steps before it; their sum is the step time (no eval, no checkpointing)
    step_seconds = sum(log_every * tokens_per_step / r["tok_s"] for r in recs if r.get("tok_s"))
    last = recs[-100:]
    evals = [
        {"step": r["step"], "tokens": r["tokens"], "loss": round(r["eval_loss"], 4), "ppl": round(r["eval_ppl"], 2)}
        for r in recs
        if "eval_ppl" in r
    ]
    summary_extra = {"loss_curve": loss_curve(recs)}  # six spans' mean training loss (the claims report)
    meta = run / "data" / "meta.json"
    if meta.is_file():  # SFT runs: how many examples the training set has and how many the run saw
        summary_extra["train_examples"] = json.loads(meta.read_text())["train"]["docs"]
        summary_extra["examples_seen"] = recs[-1]["step"] * cfg["train"]["batch_size"] * cfg["train"]["grad_accum"]
    init = cfg["train"].get("init_from")
    earlier = Path(init) / "training_summary.json" if init else None
    if earlier is not None and earlier.is_file():  # a continued run: its start's own record, stage by stage
        summary_extra["continued_from"] = json.loads(earlier.read_text())
    return {
        **summary_extra,
        "objective": cfg["train"]["objective"],
        "steps": recs[-1]["step"],
        "tokens": recs[-1]["tokens"],
        "step_seconds": round(step_seconds),
        "mean_tok_s": round(recs[-1]["tokens"] / step_seconds) if step_seconds else None,
        "final_train_loss_mean_last_100": round(sum(r["loss"] for r in last) / len(last), 4),
        "eval_history": evals,
        "run_config": cfg,
        "shipped": time.strftime("%Y-%m-%d"),
    }


def ship_adapter(src: Path, out: Path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from dlm.hub.adapters import ADAPTER_WEIGHTS

    if not (src / ADAPTER_WEIGHTS).is_file():
        raise SystemExit(f"{src}: no {ADAPTER_WEIGHTS} (was the run trained with a lora section?)")
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("README.md", ADAPTER_WEIGHTS):
            shutil.copy2(f, out / f.name)
    weights = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(src / ADAPTER_WEIGHTS).items()}
    save_file(weights, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="run folder (with final/, metrics.jsonl, run_config.json)")
    ap.add_argument("name", help="folder name under src/dlm/builtin")
    ap.add_argument("--adapter", action="store_true", help="ship the run's LoRA adapter (final-adapter/)")
    a = ap.parse_args(argv)
    out = HERE / a.name
    if a.adapter:
        ship_adapter(a.run / "final-adapter", out)
    else:
        load(a.run / "final").save_pretrained(out, dtype="bf16")
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    if size > LIMIT_BYTES:
        raise SystemExit(f"{out}: weights are {size / 1e6:.1f} MB > {LIMIT_BYTES / 1e6:.0f} MB")
    (out / "training_summary.json").write_text(json.dumps(summarize(a.run), indent=2) + "\n")
    src = a.run / ("final-adapter" if a.adapter else "final")
    print(f"shipped {src} -> {out} ({size / 1e6:.2f} MB of weights)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
