"""A dlm model for EleutherAI's lm-evaluation-harness (`lm_eval`), registered as `dlm`.

    python -m dlm.eval.harness --model dlm --model_args pretrained=/models/LLaDA-8B-Instruct,dtype=bf16,device=cuda \
        --tasks ...                                    # lm_eval's own command line, with `dlm` registered
    from dlm.eval.harness import DLMEvalLM             # in Python: lm_eval.simple_evaluate(model=DLMEvalLM(...))

- `loglikelihood`: causal models exactly (sum of next-token log-probs, and whether greedy decoding gives
  the continuation). Diffusion models use LLaDA's Monte-Carlo estimator (`MaskedDiffusion.log_likelihood`:
  mask l ~ U{1..A} of the continuation's A tokens, masked cross-entropy scaled by A / l, averaged over
  `mc_samples` draws from a generator seeded per request). `is_greedy` for a diffusion model: with the whole
  continuation masked, one forward's argmax gives every continuation token.
- `loglikelihood_rolling`: exact for causal models (every token scored once, the first given BOS/EOS, in windows
  of the model's context that overlap by one token); for diffusion models, minus the ELBO bound of each window
  of the model's context (a lower bound on the log-likelihood).
- `generate_until`: the dlm sampler with the model's generation defaults, overridable through model_args
  (steps, block_length, policy, threshold, cache, temperature); `max_gen_toks` becomes gen_length (rounded
  up to the block length) and the text is cut at the first `until` string. Requests with the same settings run
  as one batch of `batch_size`, rows independent (a batch gives the same text as each request alone).
"""

from __future__ import annotations

import warnings

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - the adapter is optional
    raise ImportError("the lm-evaluation-harness adapter needs lm-eval: pip install 'lm-eval>=0.4'") from e

from ..diffusion import build_process
from ..errors import InputError
from .nll import next_token_nll, rolling_windows

GEN_KEYS = ("steps", "block_length", "policy", "threshold", "cache", "temperature", "top_p", "top_k", "cfg_scale")


def _number(v):
    if isinstance(v, str):
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
    return v


@register_model("dlm")
class DLMEvalLM(LM):
    def __init__(
        self,
        pretrained: str = "builtin",
        dtype: str | None = None,
        device: str = "cpu",
        batch_size: int | str = 8,
        mc_samples: int = 32,
        mc_batch_size: int = 16,
        seed: int = 0,
        gguf_file: str | None = None,
        **gen,
    ):
        super().__init__()
        from ..hub import load

        unknown = sorted(set(gen) - set(GEN_KEYS))
        if unknown:
            raise InputError("model_args", f"unknown setting(s) {unknown}; allowed: {', '.join(GEN_KEYS)}")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line passes --device (default cuda:0) to every model; on a machine without
            # CUDA that default means "the machine's device", not a demand
            warnings.warn(f"device {device!r} requested but CUDA is not available: running on cpu", stacklevel=2)
            device = "cpu"
        self.lm = load(pretrained, dtype=dtype, device=device, gguf_file=gguf_file)
        self.tok, self.model = self.lm.tokenizer, self.lm.model
        self.batch = int(batch_size) if str(batch_size).isdigit() else 8
        self.mc_samples, self.mc_batch, self.seed = int(mc_samples), int(mc_batch_size), int(seed)
        self.gen = {k: _number(v) for k, v in gen.items()}
        c = self.model.config
        self.diffusion = None
        if not self.lm.is_causal:
            self.diffusion = build_process(self.lm.diffusion_config, c)

    # ---- scoring ------------------------------------------------------------------------------
    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation) as lm-eval's HF model does: encode the whole, then cut where
        the context alone ends (so a merge across the boundary goes to the continuation)."""
        whole = self.tok.encode_prompt(context + continuation)
        ctx = self.tok.encode_prompt(context) if context else whole[:0]
        n = len(ctx)
        while n > 0 and whole[:n] != ctx[:n]:
            n -= 1
        if n == len(whole):
            n -= 1
        return whole[:n], whole[n:]

    def _dev(self):
        return next(self.model.parameters()).device

    def _prefix_token(self) -> int:
        """What a causal model conditions the first token on (BOS, else EOS), as lm-eval's HF model does."""
        c = self.model.config
        return c.bos_token_id if c.bos_token_id is not None else c.eos_token_id

    @torch.no_grad()
    def _causal_ll(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        ctx = ctx or [self._prefix_token()]  # nothing to condition on: start from the prefix token
        ids = torch.tensor([ctx + cont], device=self._dev())
        nll, hit = next_token_nll(self.model, ids, greedy=True)
        return -float(nll[0, len(ctx) - 1 :].sum()), bool(hit[0, len(ctx) - 1 :].all())

    @torch.no_grad()
    def _diffusion_ll(self, ctx: list[int], cont: list[int], index: int) -> tuple[float, bool]:
        g = torch.Generator(device=self._dev()).manual_seed(self.seed * 1_000_003 + index)
        ll = self.diffusion.log_likelihood(self.model, ctx, cont, self.mc_samples, self.mc_batch, generator=g)
        x = torch.tensor([ctx + [self.model.config.mask_token_id] * len(cont)], device=self._dev())
        logits = self.model(x)[0]
        if self.model.config.shift_logits:
            logits = torch.cat([logits[:1], logits[:-1]])
        greedy = bool((logits[len(ctx) :].argmax(-1).cpu() == torch.tensor(cont)).all())
        return ll, greedy

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        out = []
        for i, req in enumerate(requests):
            context, continuation = req.args
            ctx, cont = self._split(context, continuation)
            if self.lm.is_causal:
                out.append(self._causal_ll(ctx, cont))
            else:
                out.append(self._diffusion_ll(ctx, cont, i))
        return out

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        L = self.model.config.max_seq_len
        out = []
        for i, req in enumerate(requests):
            ids = self.tok.encode_prompt(req.args[0])
            total = 0.0
            if self.lm.is_causal:  # every token scored once, the first given the prefix token
                for window in rolling_windows(ids, self._prefix_token(), L):
                    total -= float(next_token_nll(self.model, torch.tensor([window], device=self._dev())).sum())
            else:
                for a in range(0, len(ids), L):
                    window = torch.tensor([ids[a : a + L]], device=self._dev())
                    g = torch.Generator(device=self._dev()).manual_seed(self.seed * 1_000_003 + i)
                    total -= float(self.diffusion.elbo_nll(self.model, window, self.mc_samples, generator=g)[0])
            out.append(total)
        return out

    # ---- generation ---------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False):
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            kw = dict(req.args[1] or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.pop("max_gen_toks", self.lm.generation_config.gen_length))
            temperature = kw.pop("temperature", None)
            kw.pop("do_sample", None)
            groups.setdefault((tuple(until), max_new, temperature), []).append(i)
        for (until, max_new, temperature), idx in groups.items():
            settings = dict(self.gen)
            if temperature is not None:
                settings["temperature"] = float(temperature)
            if self.lm.is_causal:
                settings["gen_length"] = max_new
            else:
                block = int(settings.get("block_length") or self.lm.generation_config.block_length or max_new)
                block = min(block, max_new)
                settings["gen_length"] = -(-max_new // block) * block
                settings["block_length"] = block
                settings.setdefault("steps", settings["gen_length"])
            for a in range(0, len(idx), self.batch):
                chunk = idx[a : a + self.batch]
                prompts = [requests[i].args[0] for i in chunk]
                for i, c in zip(chunk, self.lm.generate(prompts, seed=self.seed, **settings)):
                    text = c.text
                    cuts = [text.find(s) for s in until if s and s in text]
                    out[i] = text[: min(cuts)] if cuts else text
        return out


if __name__ == "__main__":  # lm_eval's command line with the dlm model registered
    import sys

    from lm_eval.__main__ import cli_evaluate

    sys.exit(cli_evaluate())
