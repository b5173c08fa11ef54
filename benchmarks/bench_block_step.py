"""What one denoising step of a block-diffusion model costs against one AR step, both with their caches, in the
same process: the profile behind issue 15's "a block-8 step with the exact cache ≤ 1.5× an AR step".

    python benchmarks/bench_block_step.py [--prefix 128] [--blocks 1 4 8 16 32] [--runs 200] [--threads 0] [--json]
                                          [--layout column|row]

Network: the built-in AR twin's config (~10M parameters), random weights (speed does not depend on them). `ar` is
one token appended to a KV cache of `--prefix` tokens (`dlm.model.KVCache`, as `generate_autoregressive` runs it);
`block-k` is a forward over the k slots of an active block against the `--prefix` cached slots before it
(`CanvasCache.window` with keys up to the block's end, as `cache="block"` runs it), logits at the k slots. Both
time the network call only (no sampler loop); `sampler step` rows time whole `Denoiser.step` calls of a block
model (cache="block", low_confidence, one token per step; the prompt's prefill step excluded), loop included,
and `ar step (loop included)` the same for `generate_autoregressive` (per token past the prefill); `sampler loop
alone` the same Denoiser.step calls with the network replaced by fixed logits (what the loop itself costs; the
rest of a sampler step is its network calls, which also recompute each finished block once, clean). Medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from dataclasses import replace

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import machine, median_time, print_table  # noqa: E402

from dlm.builtin import builtin_path  # noqa: E402

from dlm.model import CanvasCache, KVCache, ModelConfig, Transformer  # noqa: E402
from dlm.model.layout import column_major, row_major  # noqa: E402
from dlm.sampling import GenerationConfig  # noqa: E402
from dlm.sampling.autoregressive import generate_autoregressive  # noqa: E402
from dlm.sampling.generate import Denoiser  # noqa: E402


BUILTIN_AR = builtin_path("builtin-ar") / "config.json"


def load_config(path) -> ModelConfig:
    """The built-in AR twin's network settings (its config.json), random weights."""
    fields = set(ModelConfig.__dataclass_fields__)
    return ModelConfig(**{k: v for k, v in json.loads(path.read_text()).items() if k in fields})


def timed(fn, runs: int) -> float:
    return median_time(fn, warmup=5, runs=runs)[0]


def block_forward(net, ids, prefix: int, k: int):
    """A call that runs the k slots after `prefix` against the cached K/V of every earlier slot."""
    length = prefix + k
    store = CanvasCache(length, lazy=True)
    am = torch.ones(1, length, dtype=torch.long)
    net(ids[:, :length], attention_mask=am, cache=store.refresh())  # every slot's K/V
    slots = torch.arange(prefix, length)[None]
    idx = torch.arange(k)[None]
    return lambda: net(ids[:, prefix:length], attention_mask=am, position_ids=slots, cache=store.window(slots, length),
                       logits_index=idx)  # fmt: skip


def stub_network(vocab: int):
    """Stands in for the network inside a Denoiser: fixed logits of the right shape, no compute. The sampler
    step then times the loop alone (canvas bookkeeping, cache planning, the reverse step, the unmask policy)."""
    logits = torch.randn(1, 1, vocab, generator=torch.Generator().manual_seed(0))

    def fn(x, logits_index=None, **_):
        return logits.expand(x.shape[0], logits_index.shape[1], -1).clone()

    return fn


def sampler_step(net, prompt: list[int], k: int, repeats: int, stub: bool = False) -> float:
    """Median seconds of one Denoiser.step (cache="block", one token per step), the prefill step excluded; with
    `stub`, the network call is replaced by `stub_network` (the loop alone)."""
    gen = GenerationConfig(gen_length=4 * k, steps=4 * k, block_length=k, cache="block", stop_at_eos=False)
    per_step = []
    for _ in range(repeats):
        d = Denoiser(net, gen)
        d.add([prompt])
        d.step()  # the prompt's prefill: not a denoising step
        if stub:
            d.runner.fn = stub_network(net.config.vocab_size)
        while d.live:
            t0 = time.perf_counter()
            d.step()
            per_step.append(time.perf_counter() - t0)
    return statistics.median(per_step)


def ar_loop_step(net, prompt: list[int], repeats: int, n: int = 64) -> float:
    """Seconds per generated token of generate_autoregressive past the prefill: (time(n + 1) - time(1)) / n."""
    cfg = {m: GenerationConfig(gen_length=m, steps=m, stop_at_eos=False) for m in (1, n + 1)}
    t1 = timed(lambda: generate_autoregressive(net, [prompt], cfg[1]), repeats)
    tn = timed(lambda: generate_autoregressive(net, [prompt], cfg[n + 1]), repeats)
    return (tn - t1) / n


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", type=int, default=128)
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--layout", choices=["column", "row"], default="column",
                    help="linear weights column-major (what dlm.load gives on CPU: dlm.model.layout) or row-major "
                    "(nn.Linear's default)")  # fmt: skip
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = replace(load_config(BUILTIN_AR), max_seq_len=1024)
    ar_net = Transformer(cfg).eval()
    arrange = column_major if a.layout == "column" else row_major
    arrange(ar_net)
    ids = torch.randint(4, cfg.vocab_size, (1, a.prefix + max(a.blocks)))

    kv = KVCache()
    ar_net(ids[:, : a.prefix], cache=kv)
    kv.frozen = True  # every timed call appends the same token to the same prefix

    def ar_step():
        ar_net(ids[:, a.prefix : a.prefix + 1], cache=kv, logits_index=torch.zeros(1, 1, dtype=torch.long))

    ar = timed(ar_step, a.runs)
    rows = [{"method": "ar (1 token, KV cache)", "ms": round(ar * 1e3, 3), "x_ar": 1.0}]
    prompt = ids[0, : a.prefix].tolist()
    per = ar_loop_step(ar_net, prompt, max(3, a.runs // 20))
    rows.append({"method": "ar step (loop included)", "ms": round(per * 1e3, 3), "x_ar": round(per / ar, 3)})
    for k in a.blocks:
        net = Transformer(replace(cfg, attention="block_causal", block_size=k)).eval()
        net.load_state_dict(ar_net.state_dict())
        arrange(net)
        t = timed(block_forward(net, ids, a.prefix, k), a.runs)
        rows.append({"method": f"block-{k} (exact cache)", "ms": round(t * 1e3, 3), "x_ar": round(t / ar, 3)})
        per = sampler_step(net, prompt, k, max(3, a.runs // 20))
        rows.append({"method": f"block-{k} sampler step (loop included)", "ms": round(per * 1e3, 3),
                     "x_ar": round(per / ar, 3)})  # fmt: skip
        loop = sampler_step(net, prompt, k, max(3, a.runs // 20), stub=True)
        rows.append({"method": f"block-{k} sampler loop alone (network stubbed)", "ms": round(loop * 1e3, 3),
                     "x_ar": round(loop / ar, 3)})  # fmt: skip
    print_table(rows, as_json=a.json)
    if not a.json:
        print(f"# {machine()} prefix {a.prefix}, {a.layout}-major linear weights")


if __name__ == "__main__":
    main()
