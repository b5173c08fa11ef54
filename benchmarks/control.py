"""Plug-and-play control (issue 19; Diffusion-LM section 5): classifier guidance of a continuous diffusion model
toward a keyword, with its success rate and what it costs.

For a continuous-family model (examples/configs/families/continuous.yaml, KJV text, Ruth held out):
- the attribute: the generated text contains KEYWORD as a whole word (default LORD). Training windows of `--gen`
  tokens from the model's training text are labelled by it; the keyword's rate in those windows, in held-out Ruth
  windows and in unguided samples of several candidate words is printed (choose a word whose unguided rate is
  roughly 10-40 %);
- a `dlm.diffusion.control.NoisyClassifier` is trained on those windows noised as the process noises them (the
  network frozen), or loaded (`--classifier`, one safetensors file; written there after training); its accuracy
  on held-out Ruth windows at several noise levels is reported;
- samples: one completion of `--gen` tokens per prompt (the first 6 words of each held-out Ruth verse; prompt k
  with seed SEED + k, so that rows differ in their noise, not only in their prompt), without
  guidance and with `process.guide = Guidance(classifier, scale)` at each `--scales`, the same seeds and settings.
  Per scale: success rate (samples containing the keyword), exact McNemar p (two-sided binomial test on the
  prompts where exactly one of guided / unguided succeeds) and Fisher exact p against no guidance, the samples'
  mean unigram entropy (nats, within a sample), exact repeats (samples identical to an earlier one), distinct-2,
  and tok/s (wall clock, batch `--batch`).

    python benchmarks/control.py ~/dlm-runs/families/continuous/final --keyword LORD --out reports/control.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

TRAIN = ["genesis", "exodus", "leviticus-deuteronomy", "joshua-judges", "samuel-kings", "gospels-acts"]
CANDIDATES = ["LORD", "God", "Israel", "king", "Jesus", "son", "people", "land", "children", "said"]


def has(word: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def windows(lm, paths: list[Path], length: int, keyword: str):
    """(ids (N, length), labels (N,)): consecutive windows of the texts, labelled by the keyword."""
    import torch

    from dlm.eval import pack_texts

    ids = pack_texts([p.read_text() for p in paths], lm.tokenizer, length)
    labels = torch.tensor([has(keyword, lm.tokenizer.decode(w, skip_special_tokens=True)) for w in ids.tolist()])
    return ids, labels.long()


def run(lm, ids: list[list[int]], cfg, process, seeds: list[int]) -> list[list[int]]:
    """The sampler (dlm.sampling's Denoiser, unchanged) with one seed per row."""
    from dlm.sampling.generate import Denoiser

    d = Denoiser(lm.model, cfg, process=process)
    handles = d.add(ids, seeds=seeds)
    while d.live:
        d.step()
    return [d.pop_result(h)["sequence"] for h in handles]


def sample(lm, ids: list[list[int]], cfg, guide, batch: int, seed: int) -> dict:
    process = lm.process  # a fresh process: only this one carries the guide
    process.guide = guide
    run(lm, ids[:1], cfg, process, [seed])  # warm-up
    seqs, t0 = [], time.perf_counter()
    for i in range(0, len(ids), batch):  # prompt k samples with seed + k, whatever its batch
        seqs += run(lm, ids[i : i + batch], cfg, process, [seed + k for k in range(i, min(i + batch, len(ids)))])
    wall = time.perf_counter() - t0
    texts = [lm.tokenizer.decode(s, skip_special_tokens=True) for s in seqs]
    return {"texts": texts, "seqs": seqs, "tok_s": sum(len(s) for s in seqs) / wall}


def measure(keyword: str, arm: dict, base: dict | None) -> dict:
    from scipy.stats import binomtest, fisher_exact

    from dlm.eval.quality import distinct_n, token_entropy

    hit = [has(keyword, t) for t in arm["texts"]]
    n = len(hit)
    row = {
        "success": sum(hit) / n,
        "hits": sum(hit),
        "n": n,
        "entropy": sum(token_entropy(s) for s in arm["seqs"]) / n,
        "exact_repeats": n - len(set(arm["texts"])),
        "distinct_2": distinct_n(arm["texts"], 2),
        "tok_s": arm["tok_s"],
    }
    if base is not None:
        b0 = base["hit"]
        gained = sum(g and not u for g, u in zip(hit, b0))
        lost = sum(u and not g for g, u in zip(hit, b0))
        row["mcnemar_p"] = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
        row["fisher_p"] = fisher_exact([[sum(hit), n - sum(hit)], [sum(b0), n - sum(b0)]]).pvalue
        row["gained"], row["lost"] = gained, lost
    row["hit"] = hit
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a trained continuous-family model folder")
    ap.add_argument("--keyword", default="LORD")
    ap.add_argument("--data", type=Path, default=Path("examples/data/kjv"))
    ap.add_argument("--valid", default="ruth")
    ap.add_argument("--classifier", type=Path, default=None, help="load it if it exists, else train and save there "
                    "(default MODEL/../control-KEYWORD.safetensors)")  # fmt: skip
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--scales", default="1,4,16", help="guidance scales (comma-separated); 0 = unguided always runs")
    ap.add_argument("--guide-steps", type=int, default=1, help="gradient steps on the latent per reverse step")
    ap.add_argument("--fluency", type=float, default=0.0)
    ap.add_argument("--prompts", type=int, default=0, help="first N Ruth prompts (0 = all)")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--steps", type=int, default=0, help="reverse steps (0 = the model's generation config)")
    ap.add_argument("--temperature", type=float, default=None, help="default: the model's generation config")
    ap.add_argument("--seed", type=int, default=0, help="prompt k samples with seed + k")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    import dlm
    from dlm.diffusion.control import Guidance, NoisyClassifier, classifier_accuracy, train_classifier

    lm = dlm.load(args.model)
    lm.model.eval()
    kw, G = args.keyword, args.gen
    train_ids, train_y = windows(lm, [args.data / f"{n}.txt" for n in TRAIN], G, kw)
    valid_text = (args.data / f"{args.valid}.txt").read_text()
    valid_ids, valid_y = windows(lm, [args.data / f"{args.valid}.txt"], G, kw)
    prompts = [" ".join(line.split()[:6]) for line in valid_text.splitlines() if len(line.split()) > 8]
    prompts = prompts[: args.prompts] if args.prompts else prompts
    ids = [lm.tokenizer.encode_prompt(p) for p in prompts]
    cfg = lm.make_config(None, gen_length=G, steps=args.steps or None, seed=args.seed, temperature=args.temperature,
                         stop_at_eos=False)  # fmt: skip
    print(f"{len(prompts)} prompts, gen {G}, steps {cfg.steps}, block {cfg.block_length}, T {cfg.temperature}; "
          f"'{kw}' in {float(train_y.float().mean()):.1%} of {len(train_y)} training windows, "
          f"{float(valid_y.float().mean()):.1%} of {len(valid_y)} Ruth windows", flush=True)  # fmt: skip

    base = sample(lm, ids, cfg, None, args.batch, args.seed)
    candidates = {w: sum(has(w, t) for t in base["texts"]) / len(prompts) for w in CANDIDATES}
    print("unguided rate by word: " + ", ".join(f"{w} {r:.0%}" for w, r in candidates.items()), flush=True)

    path = args.classifier or args.model.parent / f"control-{kw}.safetensors"
    t0 = time.perf_counter()
    if path.is_file():
        clf, trained = NoisyClassifier.load(path), False
    else:
        clf = train_classifier(lm.model, lm.process, train_ids, train_y, args.train_steps, batch_size=args.train_batch,
                               hidden=args.hidden, meta={"keyword": kw, "window": G}, log_every=250)  # fmt: skip
        clf.save(path)
        trained = True
    train_s = time.perf_counter() - t0
    acc = {t: classifier_accuracy(clf, lm.model, lm.process, valid_ids, valid_y, t) for t in (0.0, 0.25, 0.5, 0.75)}
    print(
        f"classifier {path} ({'trained' if trained else 'loaded'} in {train_s:.0f}s); Ruth accuracy by t: "
        + ", ".join(f"{t}: {a:.2f}" for t, a in acc.items())
        + f" (majority {max(float(valid_y.float().mean()), 1 - float(valid_y.float().mean())):.2f})",
        flush=True,
    )

    rows = [{"scale": 0.0, **measure(kw, base, None)}]
    for scale in [float(s) for s in args.scales.split(",") if s.strip()]:
        guide = Guidance(clf, scale, steps=args.guide_steps, fluency=args.fluency)
        arm = sample(lm, ids, cfg, guide, args.batch, args.seed)
        rows.append({"scale": scale, **measure(kw, arm, rows[0]), "examples": arm["texts"][:3]})
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("hit", "examples")}), flush=True)
    rows[0]["examples"] = base["texts"][:3]
    report = {
        "machine": machine(), "model": str(args.model), "keyword": kw, "prompts": len(prompts), "gen": G,
        "steps": cfg.steps, "block_length": cfg.block_length, "temperature": cfg.temperature, "seed": args.seed,
        "guide_steps": args.guide_steps, "fluency": args.fluency, "classifier": str(path),
        "classifier_params": sum(p.numel() for p in clf.parameters()), "classifier_train_steps": args.train_steps,
        "classifier_accuracy_by_t": acc, "train_window_rate": float(train_y.float().mean()),
        "ruth_window_rate": float(valid_y.float().mean()), "unguided_rate_by_word": candidates, "rows": rows,
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    print(f"| scale | '{kw}' rate | McNemar p | Fisher p | entropy | exact repeats | distinct-2 | tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mc, fi = (f"{r[k]:.2g}" if k in r else "–" for k in ("mcnemar_p", "fisher_p"))
        print(f"| {r['scale']:g} | {r['hits']}/{r['n']} ({r['success']:.0%}) | {mc} | {fi} | "
              f"{r['entropy']:.2f} | {r['exact_repeats']} | {r['distinct_2']:.2f} | {r['tok_s']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
