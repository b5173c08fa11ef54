"""`dlm generate` and `dlm infill`."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..builtin import DEFAULT_DIFFUSION_MODEL
from ..errors import InputError
from ..sampling import Streamer
from .common import (
    app, backend_option, check_at_least_one, device_option, dtype_option, echo_json, gguf_option, json_option,
    load_model, model_option,
)  # fmt: skip
from .sampling import INFILL_FIXED, given, sampling_options

MASK_GLYPH = "░"


@app.command()
@sampling_options()
def generate(
    prompts: Optional[List[str]] = typer.Argument(None, help="One or more prompts; several prompts run as one batch."),
    model: str = model_option(),
    chat: Optional[str] = typer.Option(None, "--chat", help="A user message, sent through the model's chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for --chat."),
    sampling: dict = ...,
    template: Optional[str] = typer.Option(
        None, "--template",
        help="Answer template: text locked in place, '<|mask|>' for each token the model writes (e.g. "
        "'{\"name\": \"<|mask|><|mask|>\"}'); the same for every prompt. gen_length defaults to its length.",
    ),  # fmt: skip
    regex: Optional[str] = typer.Option(None, "--regex", help="The output must match this regular expression."),
    json_schema: Optional[Path] = typer.Option(
        None, "--json-schema", help="The output must be JSON valid under this JSON Schema file."
    ),
    json_object: bool = typer.Option(False, "--json-object", help="The output must be a JSON object."),
    grammar: Optional[Path] = typer.Option(
        None, "--grammar", help="The output must parse under this Lark grammar file (llguidance's Lark)."
    ),
    steer: Optional[str] = typer.Option(
        None, "--steer", help="A new prompt the denoising switches to at --steer-at (what is settled stays)."
    ),
    steer_at: Optional[int] = typer.Option(None, "--steer-at", help="The denoising step --steer takes effect at."),
    guide_with: Optional[str] = typer.Option(
        None, "--guide-with",
        help="An instruction put before the prompt that classifier-free guidance (--cfg-scale > 0) pushes toward.",
    ),  # fmt: skip
    show_steps: bool = typer.Option(False, "--show-steps", help="Animate the denoising in the terminal."),
    image_out: Optional[Path] = typer.Option(
        None, "--image-out", help="A multimodal model draws the prompt (a caption) and writes the picture here (PNG)."
    ),
    image: Optional[Path] = typer.Option(
        None, "--image", help="A picture (PNG/JPEG, resized to the model's resolution) the prompt asks about "
        "(multimodal models; 'describe the picture' asks for a caption).",
    ),  # fmt: skip
    as_json: bool = json_option("One JSON object per line per prompt."),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    gguf_file: Optional[str] = gguf_option(),
    backend: str = backend_option(),
):
    """Generate completions of PROMPTs, or answer --chat through the chat template."""
    if bool(prompts) == (chat is not None):
        raise InputError("PROMPTS", "pass either prompts or --chat MESSAGE (not both)")
    if system is not None and chat is None:
        raise InputError("--system", "only applies with --chat")
    structured = _structured_output(regex, json_schema, json_object, grammar)
    if image_out is not None or image is not None:
        others = {"--chat": chat, "--template": template, "--steer": steer, "--guide-with": guide_with,
                  "--regex/--json-schema/--json-object/--grammar": structured, "--show-steps": show_steps or None}
        return _pictures(prompts, image_out, image, others, sampling, as_json,
                         load_model(model, dtype, device, gguf_file, backend))  # fmt: skip
    if (steer is None) != (steer_at is None):
        raise InputError("--steer" if steer is None else "--steer-at", "--steer and --steer-at go together")
    if steer is not None and (chat is not None or show_steps):
        raise InputError("--steer", "steers plain prompts, without --chat or --show-steps")
    if guide_with is not None and chat is not None:
        raise InputError("--guide-with", "guides plain prompts, not --chat")
    if structured is not None and template is not None:
        raise InputError("--template", "takes no --regex/--json-schema/--json-object/--grammar with it")
    lm = load_model(model, dtype, device, gguf_file, backend)
    tpl_ids = lm.tokenizer.encode_template(template, "--template") if template is not None else None
    if tpl_ids is not None and sampling.get("gen_length") is None:
        sampling = {**sampling, "gen_length": _fit(lm, len(tpl_ids))}
    cfg = lm.make_config(None, **sampling)
    if chat is not None:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": chat}
        ]
        prompt_ids = [lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)]
    else:
        prompt_ids = [lm.tokenizer.encode_prompt(p) for p in prompts]
    streamer = _TerminalStreamer(lm, prompt_ids, cfg, tpl_ids) if show_steps else None
    t0 = time.perf_counter()
    with streamer if streamer is not None else contextlib.nullcontext():
        if chat is not None:
            outs = [lm.chat(messages, cfg, streamer=streamer, template=template, structured_output=structured)]
            outs[0].prompt = chat
        else:
            tpls = None if template is None else [template] * len(prompts)
            outs = lm.generate(prompts, cfg, streamer=streamer, templates=tpls, structured_output=structured,
                               steer=None if steer is None else (steer_at, steer), guide_with=guide_with)  # fmt: skip
    seconds = time.perf_counter() - t0
    for o in outs:
        if as_json:
            echo_json(
                {
                    "prompt": o.prompt,
                    "text": o.text,
                    "tokens": len(o.tokens),
                    "nfe": o.nfe,
                    "steps": o.steps,
                    "seconds": round(seconds, 4),
                    "filled": o.filled,
                }
            )
        elif chat is not None:
            typer.echo(o.text)
        else:
            typer.echo(o.filled if "<|mask|>" in o.prompt else o.prompt + o.text)
            if len(outs) > 1:
                typer.echo("-" * 40)


def _pictures(prompts, image_out, image, others, sampling, as_json, lm) -> None:
    """--image-out (draw the prompt) or --image (ask the prompt about a picture): one prompt, a multimodal model."""
    from ..multimodal import ask, draw

    flag = "--image-out" if image_out is not None else "--image"
    if image_out is not None and image is not None:
        raise InputError("--image", "pass --image (a picture to ask about) or --image-out (one to draw), not both")
    for name, value in others.items():
        if value is not None:
            raise InputError(name, f"does not go with {flag}")
    if not prompts or len(prompts) != 1:
        raise InputError("PROMPTS", f"{flag} takes exactly one prompt")
    if image is not None and not image.is_file():
        raise InputError("--image", f"{image} is not a file")
    t0 = time.perf_counter()
    if image_out is not None:
        picture, o = draw(lm, prompts[0], **given(sampling))[0]
        image_out.parent.mkdir(parents=True, exist_ok=True)
        picture.save(image_out, format="PNG")
        text = str(image_out)
    else:
        o = ask(lm, str(image), prompts[0], **given(sampling))[0]
        text = o.text
    if as_json:
        echo_json({"prompt": prompts[0], "text": text, "image": str(image_out or image), "nfe": o.nfe,
                   "steps": o.steps, "seconds": round(time.perf_counter() - t0, 4)})  # fmt: skip
    else:
        typer.echo(f"wrote {text}" if image_out is not None else text)


def _structured_output(regex, json_schema, json_object, grammar):
    """The StructuredOutput the flags ask for (at most one), or None."""
    from ..sampling.constraints import StructuredOutput

    given = [f for f, v in (("--regex", regex), ("--json-schema", json_schema), ("--json-object", json_object or None),
                            ("--grammar", grammar)) if v is not None]  # fmt: skip
    if not given:
        return None
    if len(given) > 1:
        raise InputError(given[1], f"pass one of --regex, --json-schema, --json-object, --grammar, not {given}")
    for flag, path in (("--json-schema", json_schema), ("--grammar", grammar)):
        if path is not None and not path.is_file():
            raise InputError(flag, f"{path} is not a file")
    if json_schema is not None:
        return StructuredOutput(json=json_schema.read_text(), field="--json-schema")
    if grammar is not None:
        return StructuredOutput(grammar=grammar.read_text(), field="--grammar")
    if regex is not None:
        return StructuredOutput(regex=regex, field="--regex")
    return StructuredOutput(json_object=True, field="--json-object")


def _fit(lm, n: int) -> int:
    """gen_length for a template of n tokens: n, rounded up to whole blocks for a block-diffusion model."""
    bl = lm.generation_config.block_length if lm.generation_config is not None else None
    if getattr(lm.model.config, "attention", None) == "block_causal" and bl:
        return -(-n // bl) * bl
    return n


class _TerminalStreamer(Streamer):
    """Shows each row's canvas, masks as ░ (a template's locked text from the start), updating in place."""

    def __init__(self, lm, prompt_ids, cfg, template=None):
        self.lm, self.cfg = lm, cfg
        self.tok = lm.tokenizer
        start = [None if t == lm.tokenizer.mask_token_id else t for t in (template or [])]
        start += [None] * (cfg.gen_length - len(start))
        self.rows = [{"prompt": len(ids), "canvas": list(ids) + start} for ids in prompt_ids]

    def __enter__(self):
        from rich.console import Console
        from rich.live import Live

        self.live = Live(self._render(), console=Console(stderr=True), refresh_per_second=20, transient=True)
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        parts = []
        for r in self.rows:
            text = Text()
            text.append(self.tok.decode([t for t in r["canvas"][: r["prompt"]]]), style="bold")
            for t in r["canvas"][r["prompt"] :]:
                if t is None:
                    text.append(MASK_GLYPH, style="dim")
                else:
                    text.append(self.tok.decode([t]), style="green")
            parts.append(text)
        return Group(*parts)

    def on_step(self, ev):
        for j, r in enumerate(ev.rows):
            for p, t in zip(ev.positions[j], ev.tokens[j]):
                if 0 <= p < len(self.rows[r]["canvas"]):  # a revised (remasked) position shows as a mask again
                    self.rows[r]["canvas"][p] = None if t == self.tok.mask_token_id else t
        self.live.update(self._render())
        time.sleep(float(os.environ.get("DLM_SHOW_STEPS_DELAY", "0.03")))

    def on_end(self):
        pass


@app.command()
@sampling_options(exclude=INFILL_FIXED)
def infill(
    prefix: str = typer.Option(..., "--prefix"),
    suffix: str = typer.Option(..., "--suffix"),
    length: Optional[int] = typer.Option(
        None, "--length", help="Number of tokens to fill between prefix and suffix (default: the model chooses)."
    ),
    max_length: int = typer.Option(24, "--max-length", help="Without --length: the longest fill tried."),
    model: str = model_option(DEFAULT_DIFFUSION_MODEL),
    sampling: dict = ...,
    as_json: bool = json_option(),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    gguf_file: Optional[str] = gguf_option(),
):
    """Fill LENGTH tokens between a prefix and a suffix (without --length, the model chooses how many)."""
    if length is not None:
        check_at_least_one("--length", length)
    check_at_least_one("--max-length", max_length)
    lm = load_model(model, dtype, device, gguf_file)
    # steps=None stays explicit: the fill then takes min(the model's steps, LENGTH) steps
    try:
        o = lm.infill(prefix, suffix, length, max_length=max_length, **{"steps": None, **given(sampling)})
    except InputError as e:
        raise InputError("--length" if e.field == "length" else e.field, str(e).split(": ", 1)[-1]) from None
    if as_json:
        echo_json({"prefix": prefix, "suffix": suffix, "text": o.text, "tokens": len(o.tokens), "nfe": o.nfe,
                   "seconds": round(o.seconds, 4)})  # fmt: skip
    else:
        typer.echo(prefix + o.text + suffix)
