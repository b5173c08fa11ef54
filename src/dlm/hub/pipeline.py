"""A loaded model with its tokenizer and settings: the object the CLI, server and users work with."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configs import from_dict
from ..diffusion import DiffusionConfig, build_process
from ..errors import CheckpointError, ConfigError, InputError, check_choice
from ..model.layout import column_major
from ..sampling import GenerationConfig, generate
from ..sampling.autoregressive import generate_autoregressive
from ..sampling.constraints import GrammarCompiler, StructuredOutput
from .checkpoint import GENERATION_CONFIG_NAME, save_pretrained
from .adapters import resolve_location
from .loading import Checkpoint, load_model, open_checkpoint, open_tokenizer, resolve_device
from .onnx_runtime import check_decoder, is_onnx_export, load_onnx_model

BACKENDS = ("torch", "onnxruntime")
IMAGE_TOKENIZER_DIR = "image_tokenizer"  # the subfolder a multimodal model keeps its image tokenizer in


@dataclass
class Completion:
    prompt: str
    text: str
    tokens: list[int]
    nfe: int
    steps: int
    seconds: float
    filled: str = ""  # the whole canvas decoded: prompt (with any <|mask|> in it filled) + text + suffix


class DiffusionLM:
    """model + tokenizer + generation_config (+ the diffusion settings it was trained with)."""

    def __init__(
        self,
        model,
        tokenizer,
        generation_config: GenerationConfig | None = None,
        diffusion_config: DiffusionConfig | None = None,
        path: str | None = None,
        image_tokenizer=None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = generation_config or GenerationConfig()
        self.diffusion_config = diffusion_config or DiffusionConfig()
        self.path = path
        self.image_tokenizer = image_tokenizer  # a multimodal model's picture <-> codes (dlm.multimodal), else None
        self._grammars: GrammarCompiler | None = None

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device="cpu", dtype=None, gguf_file: str | None = None, backend: str = "torch"
    ) -> "DiffusionLM":
        """Any supported folder (dlm, LLaDA, Dream, LLaMA/Qwen2/Mistral), GGUF file or LoRA adapter folder (its
        base with the adapter merged; see `dlm.hub.adapters`), with its tokenizer. Foreign folders get their
        family's sampling defaults; dlm folders their generation_config.json.

        dtype None: as stored, except on CPU, where weights are computed in float32 (half-precision matmuls on
        CPU round differently for different batch shapes, so a batch would not give exactly each prompt's
        tokens alone); pass dtype="bf16" for speed.

        backend: "torch", or "onnxruntime" for an ONNX export folder (`dlm export onnx`; float32, CPU): the model
        is then an `OnnxDenoiser` the samplers drive as they drive the torch network. A folder holding ONNX
        graphs and no safetensors opens with onnxruntime whatever `backend` says."""
        check_choice("backend", backend, BACKENDS)
        folder = resolve_location(path)
        if backend == "onnxruntime" and folder.is_dir():  # before reading it: a folder of no model says so too
            check_decoder(folder)
        ck = open_checkpoint(path, gguf_file)
        if backend == "onnxruntime" or is_onnx_export(ck):
            model = load_onnx_model(ck, device=device, dtype=dtype)
        else:
            if dtype is None and resolve_device(device).type == "cpu":
                dtype = "fp32"
            model = load_model(ck, device=device, dtype=dtype)
            if resolve_device(device).type == "cpu":  # few-row sampling matmuls ~2x faster (dlm.model.layout)
                column_major(model)
        gen, diff = checkpoint_settings(ck)
        tokenizer = open_tokenizer(ck)
        image_tok = None
        if (ck.folder / IMAGE_TOKENIZER_DIR).is_dir():  # a multimodal model: pictures as tokens (issue 20)
            from ..multimodal.image_tokenizer import ImageTokenizer

            image_tok = ImageTokenizer.load(ck.folder / IMAGE_TOKENIZER_DIR)
        return cls(model, tokenizer, gen, diff, str(ck.gguf_file or ck.folder), image_tok)

    def save_pretrained(self, out_dir, **kw):
        if not isinstance(self.model, torch.nn.Module):
            raise ConfigError("backend", f"a {type(self.model).__name__} has no torch weights to save; load with torch")
        out = save_pretrained(
            self.model,
            out_dir,
            tokenizer=self.tokenizer,
            generation_config=self.generation_config,
            diffusion_config=self.diffusion_config,
            **kw,
        )
        if self.image_tokenizer is not None:
            self.image_tokenizer.save(Path(out) / IMAGE_TOKENIZER_DIR)
        return out

    def make_config(self, config: GenerationConfig | None = None, **overrides) -> GenerationConfig:
        base = dataclasses.asdict(config or self.generation_config)
        for k, v in overrides.items():
            if k not in base:
                raise ConfigError(k, f"unknown generation setting; allowed: {', '.join(sorted(base))}")
            if v is not None:
                base[k] = v
        if overrides.get("gen_length") is not None and overrides.get("block_length") is None:
            bl = base["block_length"]
            if bl and base["gen_length"] % bl:
                if getattr(self.model.config, "attention", None) == "block_causal":  # one block would break its blocks
                    raise ConfigError(
                        "gen_length",
                        f"got {base['gen_length']}; this block-diffusion model generates whole blocks of {bl}: "
                        f"use a multiple of {bl}",
                    )
                base["block_length"] = None
        if overrides.get("gen_length") is not None and overrides.get("steps") is None:
            base["steps"] = min(base["steps"], base["gen_length"])
            nb = base["gen_length"] // (base["block_length"] or base["gen_length"])
            base["steps"] = max(nb, base["steps"] - base["steps"] % nb)
        config = GenerationConfig(**base)
        if not self.is_causal:  # what only the noise process knows (the masked sampler: steps <= gen_length)
            self.process.reverse(config)
        return config

    def generate(
        self,
        prompts: str | list[str],
        config: GenerationConfig | None = None,
        *,
        streamer=None,
        suffixes: list[str] | None = None,
        templates: list[str] | None = None,
        structured_output: StructuredOutput | dict | None = None,
        steer: tuple[int, str | list[str]] | None = None,
        guide_with: str | None = None,
        logits_processors=(),
        **overrides,
    ) -> list[Completion]:
        """Continue each prompt (and fill up to its suffix: infilling). `templates`: see chat_batch;
        `structured_output`: what every completion must match (see chat_batch); `steer` = (step, new prompt(s)):
        from that denoising step on, each row is denoised under its new prompt, what it has settled kept
        (diffusion models). `guide_with`: an instruction put before each prompt that classifier-free guidance
        (cfg_scale > 0) pushes toward: the unconditional pass hides only the instruction (attribute guidance).
        `logits_processors`: `dlm.sampling.processors.LogitsProcessor`s applied at every step before sampling."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [self.tokenizer.encode_prompt(p) for p in prompts]
        hide = None
        if guide_with is not None:
            if self.is_causal:
                raise InputError("guide_with", "attribute guidance needs a diffusion model")
            head = self.tokenizer.encode_prompt(guide_with)  # what starts a sequence (a BOS for some tokenizers)
            n = len(self.tokenizer.encode(guide_with, parse_special=False))
            if not n:
                raise InputError("guide_with", "is empty")
            ids = [head + self.tokenizer.encode(p) for p in prompts]
            hide = [list(range(len(head) - n, len(head)))] * len(ids)
        sfx = [self.tokenizer.encode(s) for s in suffixes] if suffixes is not None else None
        tpl = self._templates(templates, len(prompts))
        cons = self._constraints([structured_output] * len(prompts))
        st = None
        if steer is not None:
            if self.is_causal:
                raise InputError("steer", "an autoregressive model cannot change its prompt mid-generation")
            at, new = steer
            new = [new] * len(prompts) if isinstance(new, str) else list(new)
            st = (int(at), [self.tokenizer.encode_prompt(p) for p in new])
        cfg = self.make_config(config, **overrides)
        return self._complete(prompts, ids, cfg, streamer, sfx, tpl, cons, st, hide, logits_processors)

    def _constraints(self, specs) -> list | None:
        if all(s is None for s in specs):
            return None
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer, self.model.config.vocab_size, self.tokenizer.eos_token_id)
        compiled: dict[int, object] = {}  # one compile per distinct spec object
        out = []
        for i, s in enumerate(specs):
            if s is None:
                out.append(None)
                continue
            if id(s) not in compiled:
                spec = (
                    s
                    if isinstance(s, StructuredOutput)
                    else StructuredOutput(**{"field": f"structured_outputs[{i}]", **s})
                )
                compiled[id(s)] = self._grammars.compile(spec)
            out.append(compiled[id(s)])
        return out

    def _templates(self, templates: list | None, n: int) -> list[list[int]] | None:
        """Each template as ids: a str through `encode_template`, a list of ids as given (the mask token for
        each free one: a template with special tokens locked in it, e.g. a picture's <|boi|> ... <|eoi|>)."""
        if templates is None:
            return None
        if len(templates) != n:
            raise InputError("templates", f"got {len(templates)} templates for {n} prompts")
        out = []
        for i, t in enumerate(templates):
            if isinstance(t, (list, tuple)):
                v = self.model.config.vocab_size
                if not all(isinstance(x, int) and 0 <= x < v for x in t):
                    raise InputError(f"templates[{i}]", f"token ids must be ints in [0, {v})")
                out.append(list(t))
            else:
                out.append(self.tokenizer.encode_template(t, f"templates[{i}]"))
        return out

    def chat(
        self, messages: str | list[dict], config: GenerationConfig | None = None, *, streamer=None,
        template: str | None = None, structured_output: StructuredOutput | dict | None = None, **overrides,
    ) -> Completion:  # fmt: skip
        """Answer a conversation (a str is one user message) through the tokenizer's chat template; `template`:
        an answer template, `structured_output`: what the answer must match (see chat_batch)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        tpl = None if template is None else [template]
        so = None if structured_output is None else [structured_output]
        return self.chat_batch([messages], config, streamer=streamer, templates=tpl, structured_outputs=so,
                               **overrides)[0]  # fmt: skip

    def chat_batch(
        self, conversations: list[list[dict]], config: GenerationConfig | None = None, *, streamer=None,
        templates: list | None = None, structured_outputs: list | None = None, logits_processors=(),
        **overrides,
    ) -> list[Completion]:  # fmt: skip
        """Answer several conversations in one batch (each through the chat template; rows are independent).
        `templates` (one per conversation): answer templates, "<|mask|>" for each token the model writes and the
        text between locked in place (`Tokenizer.encode_template`); gen_length must hold the longest.
        `structured_outputs` (one per conversation, None for free text): a `StructuredOutput` or its fields as a
        dict ({"regex": ...}, {"json": schema}, {"json_object": True}, {"grammar": lark}); the answer then
        matches it whenever it can within gen_length (`dlm.sampling.constraints`). A template may also be a list of
        token ids (the mask token for each free one). `logits_processors`: see `generate`."""
        texts = [
            self.tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in conversations
        ]
        ids = [self.tokenizer.encode(t) for t in texts]
        tpl = self._templates(templates, len(conversations))
        if structured_outputs is not None and len(structured_outputs) != len(conversations):
            raise InputError(
                "structured_outputs", f"got {len(structured_outputs)} for {len(conversations)} conversations"
            )
        cons = self._constraints(structured_outputs or [None] * len(conversations))
        cfg = self.make_config(config, **overrides)
        return self._complete(texts, ids, cfg, streamer, None, tpl, cons, logits_processors=logits_processors)

    def _complete(self, prompts, ids, cfg, streamer, sfx, templates=None, constraints=None,
                  steer=None, cfg_hide=None, logits_processors=()) -> list[Completion]:  # fmt: skip
        if self.is_causal:  # the AR twin: left-to-right with a KV cache
            if sfx is not None:
                raise InputError(
                    "suffixes",
                    "a causal (autoregressive) model cannot condition on a suffix; "
                    "use infill(..., prefix_only=True) for prefix-only completion",
                )
            out = generate_autoregressive(self.model, ids, cfg, streamer=streamer, templates=templates,
                                          mask_token_id=self.tokenizer.mask_token_id,
                                          constraints=constraints, logits_processors=logits_processors)  # fmt: skip
        else:
            if cfg.draft_block:
                raise InputError("draft_block", "self-speculative decoding needs a causal model (draft_verify)")
            out = generate(self.model, ids, cfg, suffixes=sfx, streamer=streamer, process=self.process,
                           templates=templates, mask_token_id=self.tokenizer.mask_token_id,
                           constraints=constraints, steer=steer, cfg_hide=cfg_hide,
                           logits_processors=logits_processors)  # fmt: skip
        return [
            Completion(
                p,
                self.tokenizer.decode(seq, skip_special_tokens=True),
                seq,
                out.nfe[i],
                out.steps[i],
                out.seconds,
                self.tokenizer.decode(out.canvases[i], skip_special_tokens=True),
            )
            for i, (p, seq) in enumerate(zip(prompts, out.sequences))
        ]

    def infill(
        self, prefix: str, suffix: str, length: int | None, *, prefix_only: bool | None = None,
        max_length: int = 24, **overrides,
    ) -> Completion:  # fmt: skip
        """Fill `length` tokens between prefix and suffix. A causal model can only continue the prefix:
        pass prefix_only=True (the default for causal models) to get that, for contrast.

        `length=None`: the model chooses the length. Every length from 1 to `max_length` is filled, and the fill
        after which the model finds the suffix's first tokens most likely wins (one more forward per length, the
        suffix's first 4 tokens masked: the fill that leads into the suffix). The rule was chosen on the valid
        split among six (BENCHMARKS.md); it costs max_length fills. Needs a model that sees the suffix."""
        prefix_only = self.is_causal if prefix_only is None else prefix_only
        if self.is_causal and not prefix_only:
            raise InputError("prefix_only", "a causal model cannot see the suffix; pass prefix_only=True")
        if length is None:
            if prefix_only or getattr(self.model.config, "attention", None) != "bidirectional":
                raise InputError("length", "choosing the length needs a model that sees the suffix (full attention)")
            if not isinstance(max_length, int) or max_length < 1:
                raise InputError("max_length", f"got {max_length!r}; must be a positive integer")
            fills = [self.infill(prefix, suffix, n, prefix_only=False, **overrides) for n in range(1, max_length + 1)]
            scores = [self._suffix_logprob(prefix, f.tokens, suffix) for f in fills]
            best = max(range(len(fills)), key=lambda i: scores[i])
            out = fills[best]
            out.nfe = sum(f.nfe for f in fills) + len(fills)
            out.steps = sum(f.steps for f in fills)
            out.seconds = sum(f.seconds for f in fills)
            return out
        overrides.setdefault("block_length", length)
        overrides.setdefault("steps", length)
        cfg = self.make_config(None, gen_length=length, trim_at_eos=False, stop_at_eos=False, **overrides)
        return self.generate([prefix], cfg, suffixes=None if prefix_only else [suffix])[0]

    @torch.no_grad()
    def _suffix_logprob(self, prefix: str, fill: list[int], suffix: str, k: int = 4) -> float:
        """log p(the suffix's first k tokens | prefix, fill, rest of the suffix), those k masked: one forward."""
        p, sfx = self.tokenizer.encode_prompt(prefix), self.tokenizer.encode(suffix)
        k = min(k, len(sfx))
        if not k:
            return 0.0
        start = len(p) + len(fill)
        x = torch.tensor([p + list(fill) + [self.tokenizer.mask_token_id] * k + sfx[k:]], device=self.device)
        idx = torch.arange(start, start + k, device=self.device)
        if getattr(self.model.config, "shift_logits", False):  # logits at i-1 predict token i
            idx = idx - 1
        logp = self.model(x, logits_index=idx[None]).float().log_softmax(-1)[0]
        return float(logp.gather(-1, torch.tensor(sfx[:k], device=self.device)[:, None]).sum())

    @property
    def process(self):
        """The noise process this model was trained with (its reverse step samples it)."""
        return build_process(self.diffusion_config, self.model.config)

    @property
    def is_causal(self) -> bool:
        return self.model.config.attention == "causal"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def checkpoint_settings(ck: Checkpoint) -> tuple[GenerationConfig | None, DiffusionConfig | None]:
    """(generation, diffusion) settings: a dlm folder's generation_config.json and `diffusion` section; for a
    foreign family its published sampling defaults (and the masked process for diffusion families)."""
    if not ck.is_dlm:
        return GenerationConfig(**ck.family.generation_defaults()), DiffusionConfig() if ck.family.diffusion else None
    diff = DiffusionConfig(**ck.raw["diffusion"]) if "diffusion" in ck.raw else None
    gen = None
    gen_file = ck.folder / GENERATION_CONFIG_NAME
    if gen_file.is_file():
        try:
            gen = from_dict(GenerationConfig, json.loads(gen_file.read_text()))
        except (json.JSONDecodeError, ConfigError) as e:
            raise CheckpointError(f"{gen_file}: {e}") from None
    return gen, diff


def load(path: str | Path, **kw) -> DiffusionLM:
    return DiffusionLM.from_pretrained(path, **kw)
