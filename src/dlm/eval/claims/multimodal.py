"""Claim 9 ("one model for text, images and more"): the multimodal diffusion model and its AR twin (issue 20)
caption, answer questions about and draw the held-out scenes (`dlm.multimodal.evaluate`), item by item.

Pre-registered (fixed before any result was seen): the diffusion model draws with one image code per forward
(as many steps as the picture has codes, the AR twin's forward count: compute-matched) and answers in text with
one token per forward (16 steps for 16 tokens), greedy, `low_confidence` unmasking. Shown beside it, not used by
the verdict: the same model drawing four codes a forward with MaskGIT's cosine schedule and answering in 4 steps
(4 tokens a forward).

Verdict rule: a task (captions by the attribute rule, VQA, drawings judged by the attribute classifier) is *done*
when the exact 95 % interval of its accuracy lies above 50 %. Confirmed: the diffusion model does all three and
the AR twin is significantly better (McNemar p < 0.05) at none; partly confirmed: it does all three but the twin
is better at some; refuted: it fails a task the twin does; inconclusive otherwise. Either way the AR twin is
one model for text and images too: unification comes from the shared vocabulary, and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from .stats import compare, interval

TASKS = ("describe", "vqa", "draw")
NAMES = {"describe": "captions (attributes)", "vqa": "VQA", "draw": "drawings (judged)", "digit": "digits"}
PREREGISTERED = {"draw": {}, "text": {"steps": 16}}  # draw: `draw`'s default, one step per image code
FAST = {"draw": {"codes_per_step": 4, "schedule": "cosine"}, "text": {"steps": 4}}
GRID = 8  # drawings shown in the report


def folders(root: Path) -> dict[str, Path] | None:
    """root/multimodal/{diffusion,ar}/final (examples/configs/multimodal/*.yaml: the same steps), when both were
    trained; with root/multimodal/diffusion-long/final too when the diffusion model was also trained longer (a
    row beside the compute-matched ones, not used by the verdict)."""
    runs = {obj: root / "multimodal" / obj / "final" for obj in ("diffusion", "ar")}
    if not all((p / "config.json").is_file() for p in runs.values()):
        return None
    long = root / "multimodal" / "diffusion-long" / "final"
    return {**runs, "diffusion-long": long} if (long / "config.json").is_file() else runs


def _items(r: dict) -> dict:
    """A kind's result without the drawings' token lists (the text answers stay)."""
    items = [{k: v for k, v in it.items() if k != "output" or isinstance(v, str)} for it in r["items"]]
    return {"n": r["n"], "accuracy": r["accuracy"], "nfe_mean": r["nfe_mean"], "items": items}


def measure(root: Path, out: Path, *, quick: bool = False, log=lambda m: None) -> dict:
    """Both twins on every test item (quick: 8 of each); the drawings grid PNG in `out`."""
    import dlm

    from ...multimodal import image_codes, render, scenes
    from ...multimodal.evaluate import AttributeJudge, evaluate
    from .measuring import run_record

    where = folders(root)
    if where is None:
        return {"missing": str(root / "multimodal")}
    n = 8 if quick else None
    lms = {obj: dlm.load(p) for obj, p in where.items()}
    judge = AttributeJudge.fit(lms["diffusion"].image_tokenizer)
    test = scenes("test")
    m: dict = {"folders": {k: str(v) for k, v in where.items()},
               "judge_accuracy": judge.accuracy([(render(s), s) for s in test])}  # fmt: skip
    rows = [("diffusion", "pre-registered", PREREGISTERED), ("diffusion", "fast", FAST), ("ar", "twin", None)]
    if "diffusion-long" in lms:
        rows.append(("diffusion-long", "pre-registered", PREREGISTERED))
    m["steps"] = {obj: (run_record(p) or {}).get("steps") for obj, p in where.items()}
    m["train_t"] = {obj: getattr(lm.diffusion_config, "train_t", None) for obj, lm in lms.items() if not lm.is_causal}
    pictures: dict = {}
    for obj, name, settings in rows:
        log(f"multimodal: {obj} ({name})")
        kinds = ("describe", "vqa", "draw", "digit") if name != "fast" else ("describe", "vqa", "draw")
        draw_settings = dict((settings or {}).get("draw") or {})
        if "codes_per_step" in draw_settings:
            draw_settings["steps"] = lms[obj].image_tokenizer.tokens_per_image // draw_settings.pop("codes_per_step")
        r = evaluate(lms[obj], judge, kinds=kinds, n=n, draw_settings=draw_settings,
                     text_settings=(settings or {}).get("text"), log=log)  # fmt: skip
        m[f"{obj}/{name}"] = {k: _items(v) if k in NAMES else v for k, v in r.items()}
        if obj in ("diffusion", "ar") and name != "fast":  # the grid shows the first drawings these rows made
            itok, tok = lms[obj].image_tokenizer, lms[obj].tokenizer
            pictures[obj] = [itok.decode(image_codes(tok, it["output"], itok.tokens_per_image))
                             for it in r["draw"]["items"][:GRID]]  # fmt: skip
    captions = [s.caption() for s in test[:GRID]]
    m["grid"] = {"file": _grid(out, [render(s) for s in test[:GRID]], pictures), "captions": captions}
    return m


def _grid(out: Path, truth, pictures: dict) -> str:
    """A PNG: one column per caption; rows real render, diffusion, AR twin (each picture scaled 4×)."""
    from PIL import Image

    rows = [truth, pictures["diffusion"], pictures["ar"]]
    s = truth[0].size[0] * 4
    sheet = Image.new("RGB", (len(truth) * (s + 4), len(rows) * (s + 4)), (255, 255, 255))
    for r, pics in enumerate(rows):
        for c, p in enumerate(pics):
            sheet.paste(p.resize((s, s), Image.Resampling.NEAREST), (c * (s + 4), r * (s + 4)))
    out.mkdir(parents=True, exist_ok=True)
    sheet.save(out / "multimodal_drawings.png")
    return "multimodal_drawings.png"


def _done(r: dict) -> bool:
    return interval(round(r["accuracy"] * r["n"]), r["n"])[0] > 0.5


def verdict(m: dict, add) -> None:
    mm = m.get("multimodal") or {}
    if "diffusion/pre-registered" not in mm:
        add(9, "not measured", "not measured", f"the multimodal twins are not trained ({mm.get('missing', '?')})")
        return
    d, a = mm["diffusion/pre-registered"], mm["ar/twin"]
    parts, done, twin_done, twin_better = [], {}, {}, []
    for k in TASKS:
        c = compare(d[k], a[k])
        done[k], twin_done[k] = _done(d[k]), _done(a[k])
        if c["p"] < 0.05 and c["rate"][1] > c["rate"][0]:
            twin_better.append(NAMES[k])
        parts.append(f"{NAMES[k]} {c['k'][0]}/{c['n'][0]} vs {c['k'][1]}/{c['n'][1]} (McNemar p = {c['p']:.2g})")
    if all(done.values()):
        v = "partly confirmed" if twin_better else "confirmed"
    elif any(twin_done[k] and not done[k] for k in TASKS):
        v = "refuted"
    else:
        v = "inconclusive"
    failed = [NAMES[k] for k in TASKS if not done[k]]
    why = ("pre-registered: one token per forward, compute-matched to the twin (same network, data and steps); "
           + (f"the diffusion model does not do {', '.join(failed)} (accuracy not above 50 %)" if failed
              else "the one diffusion model captions, answers and draws")
           + (f"; the twin is better at {', '.join(twin_better)}" if twin_better else "")
           + "; the AR twin is one model for text and pictures too: that comes from the shared vocabulary")  # fmt: skip
    add(9, "diffusion vs AR twin, held-out scenes: " + "; ".join(parts), v, why)


def section(m: dict) -> list[str]:
    """The report's claim 9 section: every row, the drawings grid."""
    mm = m.get("multimodal") or {}
    if "diffusion/pre-registered" not in mm:
        return []
    lines = ["## Claim 9: one model for text and pictures", "",
             "Held-out scenes (pictures never seen in training) and digits; accuracy with its exact 95 % interval. "
             f"Drawings are read back by an attribute classifier trained on real renders (it reads "
             f"{mm['judge_accuracy']:.1%} of the test renders' cells right). ✔: the pre-registered diffusion setting "
             f"({json.dumps(PREREGISTERED)}); the fast row ({json.dumps(FAST)}) and a diffusion model trained longer "
             "than its twin (when there is one) are shown, not used.", "",
             "| model | setting | " + " | ".join(NAMES.values()) + " | forwards per drawing |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for key in ("diffusion/pre-registered", "diffusion/fast", "ar/twin", "diffusion-long/pre-registered"):
        r = mm.get(key)
        if r is None:
            continue
        cells = []
        for k in NAMES:
            if k not in r:
                cells.append("—")
                continue
            lo, hi = interval(round(r[k]["accuracy"] * r[k]["n"]), r[k]["n"])
            cells.append(f"{r[k]['accuracy']:.1%} ({lo:.0%}–{hi:.0%}, n {r[k]['n']})")
        obj, name = key.split("/")
        mark = " ✔" if key == "diffusion/pre-registered" else ""
        steps = (mm.get("steps") or {}).get(obj)
        name += f", {steps:,} steps" if steps else ""
        t_range = (mm.get("train_t") or {}).get(obj)
        name += f", training t in [{t_range[0]:g}, {t_range[1]:g}]" if t_range else ""
        lines.append(f"| {obj}{mark} | {name} | " + " | ".join(cells) + f" | {r['draw']['nfe_mean']:.0f} |")
    g = mm["grid"]
    lines += ["", f"Drawings of the first {len(g['captions'])} test captions (rows: real render, diffusion "
              "(pre-registered), AR twin): " + "; ".join(f"{i + 1}. {c}" for i, c in enumerate(g["captions"])), "",
              f"![drawings]({g['file']})", ""]  # fmt: skip
    return lines
