"""Edge formats measured (issue 21; `benchmarks/edge.py` prints the table, `dlm eval claims` uses it for claim 8):
file size, peak memory, speed and quality of a model in each format dlm writes (fp32, bf16, torchao int8 / int8
dynamic / int4, the ONNX export under ONNX Runtime in fp32 / int8 / int4), and GPT-2 small (124M, transformers'
GPT2LMHeadModel built from its config: memory does not depend on the weights' values) measured the same way.

Every row runs in a fresh child process (`python -m dlm.bench.edge`; one thread), so its peak RSS (VmHWM) is its
own. `peak_rss_mb` is the whole process (Python, torch, the runtime) after loading and generating at batch 1 (the
edge use), `added_mb` that peak above the RSS after the imports (weights, activations, caches); `peak_all_mb`
is the peak at the end, after batch 8 and the quality checks (perplexity in batches of 8 windows dominates it).
Speed: greedy, gen 64, the model's shipped sampler settings, batch 1 (4
prompts one by one) and batch 8, after one warm-up. Quality: perplexity on held-out Python (exact for a causal
model, the ELBO bound with 4 samples for diffusion; 16 windows of 256 tokens), completion parse rate on 24
held-out signatures (gen 64), infilling exact match on 24 held-out line tasks; the 24 completions come back so a
caller can count those identical to another row's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = "data/python/test.jsonl"
ROWS = [  # (format, backend)
    ("fp32", "torch"), ("bf16", "torch"), ("int8", "torch"), ("int8-dynamic", "torch"), ("int4", "torch"),
    ("fp32", "onnxruntime"), ("int8", "onnxruntime"), ("int4", "onnxruntime"),
]  # fmt: skip


def status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def prepare(model: str, fmt: str, backend: str, work: Path) -> tuple[str, dict]:
    """The folder a row loads (written once under `work`) and the load keywords."""
    import dlm
    from dlm.hub.quantize import quantize

    name = model.replace("/", "_")
    if backend == "onnxruntime":
        from dlm.hub.onnx_export import export_onnx

        out = work / f"{name}-onnx-{fmt}"
        if not (out / "config.json").is_file():
            export_onnx(model, out, **({} if fmt == "fp32" else {"bits": int(fmt[-1])}))
        return str(out), {"backend": "onnxruntime"}
    out = work / f"{name}-{fmt}"
    if fmt == "bf16":  # the shipped folder
        return str(Path(dlm.load(model).path)), {"dtype": fmt}
    if fmt == "fp32":
        if not (out / "config.json").is_file():
            dlm.load(model, dtype="fp32").save_pretrained(out, dtype="fp32")
        return str(out), {"dtype": fmt}
    if not (out / "config.json").is_file():
        bits = 4 if fmt == "int4" else 8
        quantize(model, out, bits, scheme="dynamic" if fmt == "int8-dynamic" else "weight_only")
    return str(out), {}


def folder_mb(path: str) -> float:
    """Megabytes of what a row loads: its safetensors, or the samplers' graph of an ONNX folder."""
    files = list(Path(path).glob("*.safetensors")) or list(Path(path).glob("decoder.onnx*"))
    return sum(f.stat().st_size for f in files) / 1e6


def warm_up(path: str, load_kw: dict) -> None:
    """Write a tiny random network shaped like the one at `path` (1 layer, d_model 64) in the same format (dtype,
    torchao scheme, or an ONNX export with the same quantisation), load it through `dlm.load` with the same
    keywords and generate a few tokens with the same sampler settings: every lazily imported library and one-off
    allocation of that path (meta-device construction, the runtime's arenas) happens before the baseline."""
    import dataclasses
    import tempfile

    import torch

    import dlm
    from dlm.hub import DiffusionLM, open_checkpoint
    from dlm.hub.loading import open_tokenizer
    from dlm.hub.pipeline import checkpoint_settings
    from dlm.model import Transformer

    ck = open_checkpoint(path)
    cfg = dataclasses.replace(ck.config, d_model=64, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=128, head_dim=None)
    torch.manual_seed(0)
    tiny = DiffusionLM(Transformer(cfg).eval(), open_tokenizer(ck), *checkpoint_settings(ck))
    spec = ck.raw.get("quantization")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tiny"
        if load_kw.get("backend") == "onnxruntime":
            from dlm.hub.onnx_export import export_onnx

            quant = json.loads((Path(path) / "onnx_config.json").read_text())["graphs"]["decoder.onnx"]
            export_onnx(tiny, out, graphs=["decoder.onnx"], bits=(quant.get("quantization") or {}).get("bits"))
        elif spec:
            from dlm.hub.quantize import quantize_model, save_quantized

            spec = {**spec, "group_size": min(spec.get("group_size", 32), 64)}
            quantize_model(tiny.model, spec)
            save_quantized(tiny, out, spec)
        else:
            tiny.save_pretrained(out, dtype=load_kw.get("dtype"))
        dlm.load(out, **load_kw).generate("def f(x):", gen_length=8)


def child(a) -> dict:
    """One row, in this process: load, speed, quality, peak memory."""
    import torch

    torch.set_num_threads(1)
    import dlm
    from dlm.eval import code, pack_texts, perplexity
    from dlm.training.data import expand_sources, iter_documents

    docs = [d for _, d in iter_documents(expand_sources([a.data], "data")) if isinstance(d, str)]
    # the runtime a row uses is warmed up first, on a tiny network of the same kind through the same path, so that
    # lazily imported libraries and one-off allocations are in the baseline: "added" counts the model's own memory
    if a.gpt2:
        from transformers import GPT2Config, GPT2LMHeadModel

        tiny = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2)).eval()
        with torch.no_grad():
            tiny.generate(torch.randint(0, 50257, (1, 4)), max_new_tokens=4, do_sample=False, pad_token_id=0)
        del tiny
    else:
        warm_up(a.path, json.loads(a.load_kw))
    base_kb = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    if a.gpt2:
        torch.manual_seed(0)
        net = GPT2LMHeadModel(GPT2Config()).eval()
        load_s = time.perf_counter() - t0
        ids = torch.randint(0, 50257, (1, 16))
        with torch.no_grad():
            net.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
            t1 = time.perf_counter()
            net.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
            tps = 64 / (time.perf_counter() - t1)
        hwm = status_kb("VmHWM")
        params = sum(p.numel() for p in net.parameters()) / 1e6
        return {"load_s": load_s, "tok_s_b1": tps, "peak_rss_mb": hwm / 1024, "added_mb": (hwm - base_kb) / 1024,
                "params_m": params}  # fmt: skip
    lm = dlm.load(a.path, **json.loads(a.load_kw))
    load_s = time.perf_counter() - t0
    functions = code.extract_functions(docs)
    prompts = code.completion_tasks(functions, a.n, 0)
    fits = code.fit_to_model(lm, functions, task="infill")
    tasks = code.infill_tasks(fits, a.n, 0, "line")
    lm.generate(prompts[0], gen_length=64)  # warm-up
    t1 = time.perf_counter()
    toks = sum(len(lm.generate(p, gen_length=64)[0].tokens) for p in prompts[:4])
    b1 = toks / (time.perf_counter() - t1)
    gen_kb = status_kb("VmHWM")  # the edge use: one prompt at a time (batch 8 and the quality checks come after)
    t1 = time.perf_counter()
    toks = sum(len(c.tokens) for c in lm.generate(prompts[:8], gen_length=64))
    b8 = toks / (time.perf_counter() - t1)
    comp = code.evaluate_completion(lm, prompts, gen_length=64, keep_rows=True)
    inf = code.evaluate_infill(lm, tasks)
    windows = pack_texts(docs, lm.tokenizer, 256, max(2, a.n * 2 // 3) * 256)
    ppl = perplexity(lm.model, windows, diffusion_config=lm.diffusion_config, samples=4, batch_size=8)
    return {"load_s": load_s, "tok_s_b1": b1, "tok_s_b8": b8, "ppl": ppl.ppl, "ppl_kind": ppl.kind,
            "parse_rate": comp["parse_rate"], "infill_em": inf["exact_match"],
            "completions": [r["completion"] for r in comp["rows"]],
            "peak_rss_mb": gen_kb / 1024, "added_mb": (gen_kb - base_kb) / 1024,
            "peak_all_mb": status_kb("VmHWM") / 1024}  # fmt: skip


def run_child(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "dlm.bench.edge", *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(models, work: Path, rows=ROWS, *, data: str = DATA, n: int = 24, log=lambda m: None) -> list[dict]:
    """One dict per (model, format, backend) row and one for GPT-2 small; `same_as_fp32`: the share of a row's
    completions identical to its model's first row's. `data`: held-out Python (JSONL, files or folders); `n`:
    completion and infilling tasks (and n * 2/3 perplexity windows)."""
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for model in models:
        ref = None
        for fmt, backend in rows:
            path, kw = prepare(model, fmt, backend, work)
            r = run_child(["--path", path, "--load-kw", json.dumps(kw), "--data", data, "--n", str(n)])
            completions = r.pop("completions", None)
            if ref is None:
                ref = completions
            if completions is not None and ref is not None:
                r["same_as_fp32"] = sum(x == y for x, y in zip(completions, ref)) / len(ref)
            out.append({"model": model, "format": fmt, "backend": backend, "file_mb": folder_mb(path), **r})
            log(json.dumps(out[-1]))
    gpt2 = run_child(["--gpt2"])
    size = {"file_mb": gpt2["params_m"] * 4} if "params_m" in gpt2 else {}  # fp32 safetensors: 4 bytes a weight
    out.append({"model": "gpt2-small", "format": "fp32", "backend": "torch", **size, **gpt2})
    return out


if __name__ == "__main__":  # a child: one row
    ap = argparse.ArgumentParser()
    ap.add_argument("--path")
    ap.add_argument("--load-kw", default="{}")
    ap.add_argument("--gpt2", action="store_true")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--n", type=int, default=24)
    print(json.dumps(child(ap.parse_args())))
