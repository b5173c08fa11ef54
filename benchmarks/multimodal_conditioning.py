"""Does a model learn to draw *from its caption*? (issue 20) A small network (4 layers x 128) trained on the draw
rows of `dlm data prepare multimodal` alone, by masked-diffusion SFT (dlm's process and loss) or next-token
prediction, at a given peak learning rate; every `--every` steps the cross-entropy of the held-out pictures' image
codes is measured twice: after their own caption, and after another test caption of the same token length. A
model that uses the caption scores its own clearly lower; one that predicts the pictures' marginal scores both
alike. Diffusion: every image code masked (a drawing's first step); AR: teacher-forced.

    dlm data prepare multimodal
    python benchmarks/multimodal_conditioning.py --objective ar --lr 2e-3 --out reports/multimodal_conditioning.json
    python benchmarks/multimodal_conditioning.py --objective diffusion --lr 2e-3 --lr 1e-3 --lr 5e-4 \
        --out reports/multimodal_conditioning.json

One thread per run; rows are drawn with a fixed seed, so a run repeats.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def load_rows(data: Path, tok, split: str, seq_len: int) -> list[tuple[list[int], int]]:
    out = []
    for line in (data / f"{split}.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "draw":
            p, a = tok.sft_example(r["messages"])
            out.append(((p + a + [tok.eos_token_id] * seq_len)[:seq_len], len(p)))
    return out


def other_prompts(rows):
    """For each row, the prompt of another row with a different prompt of the same length."""
    out = []
    for i, (ids, p) in enumerate(rows):
        for k in range(1, len(rows)):
            ids2, p2 = rows[(i + k) % len(rows)]
            if p2 == p and ids2[:p] != ids[:p]:
                out.append(ids2[:p])
                break
        else:
            out.append(ids[:p])
    return out


@torch.no_grad()
def caption_gap(net, rows, swapped, tok, codes: int, causal: bool) -> dict:
    """Held-out image-code cross-entropy after the right and after another caption."""
    net.eval()
    res = {}
    for name in ("right", "other"):
        x = torch.tensor([ids for ids, _ in rows])
        target = x.clone()
        for i, (_, p) in enumerate(rows):
            if name == "other":
                x[i, :p] = torch.tensor(swapped[i])
            if not causal:
                x[i, p + 1 : p + 1 + codes] = tok.mask_token_id  # <|boi|> and <|eoi|> stay, as a drawing's template
        logits = net(x).float()
        shift = 1 if causal else 0
        ce = [F.cross_entropy(logits[i, p + 1 - shift : p + 1 + codes - shift], target[i, p + 1 : p + 1 + codes])
              for i, (_, p) in enumerate(rows)]  # fmt: skip
        res[name] = round(torch.stack(ce).mean().item(), 4)
    net.train()
    return res


def run(data: Path, objective: str, lr: float, steps: int, every: int, seed: int = 0, log=print) -> dict:
    from dlm.diffusion import DiffusionConfig, build_process
    from dlm.model import ModelConfig, Transformer
    from dlm.tokenizer import DLMTokenizer
    from dlm.training.objectives import ar_loss

    torch.set_num_threads(1)
    manifest = json.loads((data / "manifest.json").read_text())
    codes = manifest["tokens_per_image"]
    tok = DLMTokenizer.from_dir(data / "tokenizer")
    seq_len = codes + 24
    train, test = load_rows(data, tok, "train", seq_len), load_rows(data, tok, "test", seq_len)[:128]
    swapped = other_prompts(test)
    causal = objective == "ar"
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=352,
                      max_seq_len=seq_len, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, attention="causal" if causal else "bidirectional")  # fmt: skip
    net = Transformer(cfg)
    process = build_process(DiffusionConfig(), cfg, mask_token_id=tok.mask_token_id)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    g, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    curve, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        batch = [train[rng.randrange(len(train))] for _ in range(32)]
        ids, plen = torch.tensor([b[0] for b in batch]), torch.tensor([b[1] for b in batch])
        if causal:
            loss = ar_loss(net, ids, prompt_lengths=plen)
        else:
            loss = process.sft_loss(net, ids, plen, generator=g).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if step % every == 0:
            gap = caption_gap(net, test, swapped, tok, codes, causal)
            curve.append({"step": step, "loss": round(loss.item(), 4), **gap})
            log(f"{objective} lr {lr:g} step {step}: {gap} ({time.perf_counter() - t0:.0f} s)")
    return {"objective": objective, "lr": lr, "steps": steps, "network": "4 x 128", "codes": codes, "curve": curve}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "multimodal")
    p.add_argument("--objective", choices=("diffusion", "ar"), default="diffusion")
    p.add_argument("--lr", type=float, action="append", help="peak learning rate (repeat for several runs)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    runs = [run(a.data, a.objective, lr, a.steps, a.every) for lr in (a.lr or [2e-3])]
    if a.out:
        old = json.loads(a.out.read_text()) if a.out.is_file() else {"runs": []}
        keep = [r for r in old["runs"] if (r["objective"], r["lr"]) not in {(x["objective"], x["lr"]) for x in runs}]
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"command": "python benchmarks/multimodal_conditioning.py", "date": time.strftime(
            "%Y-%m-%d"), "runs": keep + runs}, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
