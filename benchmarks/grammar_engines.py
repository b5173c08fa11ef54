"""Which structured-output engine dlm uses, measured (issue 18): llguidance, xgrammar and outlines-core on dlm's
own tokenizers, for the work a diffusion sampler asks of them: build the engine's tokenizer from the
`tokenizers` JSON dlm has (no network, no transformers object if possible), compile a JSON Schema and a regex,
then walk a valid output token by token: a next-token mask and one advance per step (what the frontier rule does
every step), and check a run of tokens at once (what settling out-of-order commits does). Every engine's mask is
checked to allow the true next token at every step.

    pip install xgrammar outlines-core     # benchmark-only; dlm depends on llguidance alone
    python benchmarks/grammar_engines.py [--model builtin] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import dlm

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
          "size": {"type": "integer", "minimum": 0, "maximum": 999}}, "required": ["name", "size"],
          "additionalProperties": False}  # fmt: skip
REGEX = r"[0-9]{3}-[0-9]{4}"
OUTPUTS = {"json": '{"name":"abc","size":12}', "regex": "555-1234"}


def _bytes_of(tok) -> list[bytes]:
    """Each id's bytes (byte-level BPE: the GPT-2 byte-to-character table reversed)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    back = {chr(c): b for b, c in zip(bs, cs)}
    out = []
    for i in range(tok.vocab_size):
        s = tok.id_to_token(i) or ""
        out.append(bytes(back[ch] for ch in s) if all(ch in back for ch in s) else s.encode())
    return out


class LLGuidance:
    name = "llguidance"

    def __init__(self, tok, V):
        import llguidance

        self.V, self.tk = V, llguidance.LLTokenizer(tok.backend.to_str(), n_vocab=V, eos_token=tok.eos_token_id)

    def compile(self, kind, spec):
        from llguidance import LLMatcher

        if kind == "json":  # compact JSON, as dlm compiles it (xgrammar: any_whitespace=False)
            g = LLMatcher.grammar_from_json_schema(json.dumps({"x-guidance": {"whitespace_flexible": False}, **spec}))
        else:
            g = LLMatcher.grammar_from_regex(spec)
        return lambda: _LLG(LLMatcher(self.tk, g), self.V)


class _LLG:
    def __init__(self, m, V):
        from llguidance.torch import allocate_token_bitmask

        self.m, self.bm = m, allocate_token_bitmask(1, V)

    def allows(self, t):
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self.m, self.bm, 0)
        return bool((int(self.bm[0, t // 32]) >> (t % 32)) & 1)

    def advance(self, t):
        self.m.consume_token(t)

    def check_run(self, ts):
        return self.m.try_consume_tokens(ts)


class XGrammar:
    name = "xgrammar"

    def __init__(self, tok, V):
        import xgrammar as xgr

        info = xgr.TokenizerInfo(_bytes_of(tok), xgr.VocabType.RAW, vocab_size=V, stop_token_ids=[tok.eos_token_id])
        self.V, self.xgr, self.c = V, xgr, xgr.GrammarCompiler(info)

    def compile(self, kind, spec):
        if kind == "json":
            cg = self.c.compile_json_schema(json.dumps(spec), any_whitespace=False, separators=(",", ":"))
        else:
            cg = self.c.compile_regex(spec)
        return lambda: _XG(self.xgr, self.xgr.GrammarMatcher(cg), self.V)


class _XG:
    def __init__(self, xgr, m, V):
        self.m, self.bm = m, xgr.allocate_token_bitmask(1, V)

    def allows(self, t):
        self.m.fill_next_token_bitmask(self.bm)
        return bool((int(self.bm[0, t // 32]) >> (t % 32)) & 1)

    def advance(self, t):
        self.m.accept_token(t)

    def check_run(self, ts):
        n = 0
        for t in ts:
            if not self.m.accept_token(t):
                break
            n += 1
        return n


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tok, V):
        import outlines_core as oc

        vocab: dict[bytes, list[int]] = {}
        special = set(tok.special_ids.values()) if hasattr(tok, "special_ids") else set()
        for i, b in enumerate(_bytes_of(tok)):
            if i != tok.eos_token_id and i not in special and b:
                vocab.setdefault(b, []).append(i)
        self.oc, self.voc, self.V = oc, oc.Vocabulary(tok.eos_token_id, vocab), V

    def compile(self, kind, spec):
        from outlines_core.json_schema import build_regex_from_schema

        rx = build_regex_from_schema(json.dumps(spec)) if kind == "json" else spec
        index = self.oc.Index(rx, self.voc)
        return lambda: _OC(self.oc.Guide(index), self.V)


class _OC:
    def __init__(self, g, V):
        self.g, self.mask = g, torch.zeros((V + 31) // 32, dtype=torch.int32)

    def allows(self, t):
        return t in self.g.get_tokens()

    def advance(self, t):
        self.g.advance(t)

    def check_run(self, ts):
        return len(ts) if self.g.accepts_tokens(ts) else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin")
    p.add_argument("--repeats", type=int, default=200)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    lm = dlm.load(a.model)
    tok, V = lm.tokenizer, lm.model.config.vocab_size
    print(f"{a.model}: vocabulary {V}; one thread; {a.repeats} walks per cell")
    print("| engine | tokenizer build (ms) | kind | compile (ms) | mask + advance per token (µs) | run check (µs) | "
          "true token allowed |")
    print("|---|---|---|---|---|---|---|")
    for cls in (LLGuidance, XGrammar, OutlinesCore):
        t0 = time.perf_counter()
        try:
            eng = cls(tok, V)
        except Exception as e:  # an engine that cannot be built offline from this tokenizer says so
            print(f"| {cls.name} | failed: {type(e).__name__}: {str(e)[:80]} | | | | | |")
            continue
        build = (time.perf_counter() - t0) * 1e3
        for kind, spec in (("json", SCHEMA), ("regex", REGEX)):
            ids = tok.encode(OUTPUTS[kind], parse_special=False)
            t0 = time.perf_counter()
            try:
                new = eng.compile(kind, spec)
            except Exception as e:
                print(f"| {cls.name} | {build:.0f} | {kind} | failed: {type(e).__name__}: {str(e)[:60]} | | | |")
                continue
            comp = (time.perf_counter() - t0) * 1e3
            ok, t_step, t_run = True, 0.0, 0.0
            for _ in range(a.repeats):
                m = new()
                t0 = time.perf_counter()
                for t in ids:
                    ok &= m.allows(t)
                    m.advance(t)
                t_step += time.perf_counter() - t0
                m = new()
                t0 = time.perf_counter()
                ok &= m.check_run(ids) == len(ids)
                t_run += time.perf_counter() - t0
            per_tok = t_step / (a.repeats * len(ids)) * 1e6
            print(f"| {cls.name} | {build:.0f} | {kind} | {comp:.1f} | {per_tok:.0f} | {t_run / a.repeats * 1e6:.0f} | "
                  f"{'yes' if ok else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
