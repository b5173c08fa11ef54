"""Sequence-level distillation data: a causal teacher's greedy completions of corpus prompts, generated once and
stored as an SFT dataset (`{"prompt_ids", "completion_ids"}` records, the teacher's exact tokens) that a diffusion
student trains on (`data.task: sft`). A teacher's greedy outputs carry far less entropy than the corpus, so a
parallel student can be sure of many tokens at once (non-autoregressive translation's recipe; dParallel and d3LLM
distil the same way). A small teacher's greedy text loops (the built-in AR twin repeats 51 % of the 8-grams of
its completions; held-out code 1.6 %): `no_repeat_ngram_size` keeps the teacher greedy but loop-free.

Prompts are windows of `prompt_tokens` tokens cut from the corpus documents at offsets drawn from `seed` (every
prompt is decided before any is generated), split into shards of `shard_size` prompts. Each shard is written
atomically (`part-00000.jsonl`, …) and skipped when it exists, so an interrupted run resumes where it stopped and
a finished run gives the same files whatever was interrupted. `manifest.json` records the teacher, tokenizer,
settings and counts; a rerun with other settings into the same folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, check_choice, check_positive


@dataclass
class TeacherDataConfig:
    teacher: str  # a causal model: folder, .gguf or built-in name (builtin-ar)
    data: list[str] = field(default_factory=list)  # corpus sources the prompts are cut from
    out: str = "data/distill"
    prompts: int = 1000
    prompt_tokens: int = 64
    gen_length: int = 128
    batch_size: int = 16
    shard_size: int = 256
    seed: int = 0
    max_bytes: int = 20_000_000  # corpus text read to cut prompts from (0 = all)
    dtype: str = "float32"  # float32 | bfloat16 (the teacher's forward passes)
    no_repeat_ngram_size: int = 0  # the teacher never repeats an n-gram of this size (0 = plain greedy)
    # store the corpus's own next gen_length tokens after each prompt instead of the teacher's (no teacher forward;
    # the teacher gives the tokenizer): real text in the same format, to mix with a teacher's completions
    corpus_continuations: bool = False

    def __post_init__(self) -> None:
        for name in ("prompts", "prompt_tokens", "gen_length", "batch_size", "shard_size"):
            check_positive(name.replace("_", "-"), getattr(self, name))
        if not self.data:
            raise InputError("data", "give at least one corpus source to cut prompts from")
        check_choice("dtype", self.dtype, ("float32", "bfloat16"))
        check_positive("no-repeat-ngram-size", self.no_repeat_ngram_size, allow_zero=True)


def cut_prompts(docs: list[list[int]], n: int, length: int, seed: int) -> list[tuple[int, int]]:
    """(document index, offset) of `n` prompt windows of `length` tokens, drawn from `seed`: a document with
    probability proportional to the windows it holds, then an offset uniformly among them."""
    room = np.array([max(len(d) - length + 1, 0) for d in docs], dtype=np.float64)
    if room.sum() == 0:
        raise InputError("data", f"no document holds a {length}-token prompt")
    rng = np.random.default_rng(seed)
    which = rng.choice(len(docs), size=n, p=room / room.sum())
    return [(int(i), int(rng.integers(0, room[i]))) for i in which]


def _fingerprint(cfg: TeacherDataConfig, tokenizer_hash: str) -> str:
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("out", "batch_size", "shard_size")}
    for added in ("no_repeat_ngram_size", "corpus_continuations"):  # added later: older datasets keep theirs
        if not keep[added]:
            del keep[added]
    return hashlib.sha1(json.dumps([keep, tokenizer_hash], sort_keys=True).encode()).hexdigest()[:16]


def make_teacher_data(cfg: TeacherDataConfig, *, device="cpu", log=print, max_shards: int | None = None) -> dict:
    """Generate (or finish) the distillation dataset in `cfg.out`; returns the manifest. `max_shards`: stop after
    writing this many new shards (as if interrupted)."""
    from ..hub import load
    from ..sampling import GenerationConfig
    from ..sampling.autoregressive import generate_autoregressive
    from .documents import Completion, expand_sources, iter_documents
    from .token_cache import _tokenizer_hash

    lm = load(cfg.teacher, device=device)
    if not lm.is_causal:
        raise InputError("teacher", f"{cfg.teacher} is not a causal (autoregressive) model")
    tok = lm.tokenizer
    tok_hash = (_tokenizer_hash(tok) or type(tok).__name__)[:16]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    fp = _fingerprint(cfg, tok_hash)
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") != fp:
            raise InputError("out", f"{out} holds distillation data made with other settings; use another folder")

    texts, total = [], 0
    for _, doc in iter_documents(expand_sources(cfg.data, "data")):
        text = doc if isinstance(doc, str) else None
        if isinstance(doc, Completion):
            text = "".join(doc.texts())
        if text:
            texts.append(text)
            total += len(text)
        if cfg.max_bytes and total >= cfg.max_bytes:
            break
    docs = [tok.encode(t, parse_special=False) for t in texts]
    windows = cut_prompts(docs, cfg.prompts, cfg.prompt_tokens, cfg.seed)
    gen = GenerationConfig(gen_length=cfg.gen_length, steps=cfg.gen_length, temperature=0.0, dtype=cfg.dtype,
                           no_repeat_ngram_size=cfg.no_repeat_ngram_size)  # fmt: skip
    shards = [windows[i : i + cfg.shard_size] for i in range(0, len(windows), cfg.shard_size)]
    manifest = {
        "teacher": cfg.teacher,
        "tokenizer_sha1": tok_hash,
        "fingerprint": fp,
        "settings": asdict(cfg),
        "documents": len(docs),
        "shards": len(shards),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    written, t0 = 0, time.perf_counter()
    for k, shard in enumerate(shards):
        path = out / f"part-{k:05d}.jsonl"
        if path.is_file():
            continue
        if max_shards is not None and written >= max_shards:
            break
        lines = []
        for b in range(0, len(shard), cfg.batch_size):
            chunk = shard[b : b + cfg.batch_size]
            prompts = [docs[i][o : o + cfg.prompt_tokens] for i, o in chunk]
            if cfg.corpus_continuations:
                after = cfg.prompt_tokens + cfg.gen_length
                completions = [docs[i][o + cfg.prompt_tokens : o + after] for i, o in chunk]
            else:
                completions = generate_autoregressive(lm.model, prompts, gen).sequences
            for (i, o), p, c in zip(chunk, prompts, completions):
                lines.append(json.dumps({"prompt_ids": p, "completion_ids": c, "source": f"{i}:{o}"}))
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
        written += 1
        log(f"shard {k + 1}/{len(shards)}: {len(shard)} completions ({time.perf_counter() - t0:.0f} s)")
    done = sorted(out.glob("part-*.jsonl"))
    manifest.update(complete=len(done) == len(shards), completions=sum(1 for p in done for _ in p.open()))
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest
