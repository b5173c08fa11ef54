"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/completions, /v1/chat/completions (streaming as
server-sent events), /v1/dlm/denoise (every step's canvas, for visualisation), /health, /metrics.

Diffusion settings are extra body fields (steps, block_length, policy, threshold, cfg_scale, cache), validated
like the OpenAI ones; a bad field gets a 400 whose `param` names it. Structured output: OpenAI's
`response_format` (json_object, json_schema) or vLLM's `guided_regex` / `guided_grammar` (Lark), through
llguidance for either kind of model; `template` locks text in the answer (a dlm extension). `--api-key` requires
`Authorization: Bearer KEY` on /v1/*. A full queue answers 429 with Retry-After.

Bad input never costs the server more than a bounded amount of work: bodies over `max_body_bytes` get a 413
(by Content-Length, or as soon as a chunked body passes it), text that is not valid Unicode (a lone surrogate
such as JSON's "\\udcff") and prompts over `max_prompt_chars` get a 400 before anything is tokenised, a request
for more completions than the queue can ever hold gets a 400, and tokenising runs off the event loop.

Pictures (a model with an image tokenizer): a chat message's content may hold OpenAI `image_url` parts (base64
data URLs), read as the picture's image tokens; `"modalities": ["image"]` (OpenRouter's convention) draws the last
user message and answers `message.images` (PNG data URLs); `/v1/dlm/denoise` with `"image": true` draws its
prompt and sends the partial picture with every frame. A drawing is an ordinary engine job that carries the
picture's template and its image-codes-only logits processor, so it is batched, cancelled and timed out like
text, off the event loop.

This module holds the routes and `create_app`; the request bodies are in schemas.py, the error shape and its
handlers in errors.py, the input limits (middleware, text checks, tokenising off the loop) in limits.py, the
batching in engine.py, pictures in and out in images.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from functools import partial
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse

from ..sampling.caches import check_cache
from ..sampling.constraints import GrammarCompiler, StructuredOutput
from .engine import Engine, Job, QueueFull
from .errors import APIError, add_error_handlers
from .images import Pictures, check_pictures, message_text, parse_content, png_data_url
from .limits import CHARS_PER_TOKEN, MAX_BODY_BYTES, APIKey, BodyLimit, check_chars, check_text, tokenize
from .schemas import ChatRequest, CompletionRequest, DenoiseRequest, Settings

PLAYGROUND = (Path(__file__).parent / "static" / "index.html").read_text()


def create_app(lm, *, model_name: str = "builtin", api_key: str | None = None, max_batch: int = 8,
               max_queue: int = 64, timeout: float = 300.0, max_body_bytes: int = MAX_BODY_BYTES,
               max_prompt_chars: int | None = None) -> FastAPI:  # fmt: skip
    """`max_body_bytes`: larger request bodies get a 413. `max_prompt_chars`: a longer prompt (or chat content
    in all, or suffix) gets a 400 before it is tokenised; default CHARS_PER_TOKEN x the model's context."""
    from .metrics import Metrics

    metrics = Metrics()
    engine = Engine(lm, max_batch=max_batch, max_queue=max_queue, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.shutdown()

    app = FastAPI(
        title="dlm", version="1", description="OpenAI-compatible API for diffusion language models", lifespan=lifespan
    )
    app.state.engine, app.state.metrics = engine, metrics
    created = int(time.time())
    tok = lm.tokenizer
    defaults = lm.generation_config
    limit = lm.model.config.max_seq_len
    max_chars = max_prompt_chars if max_prompt_chars is not None else CHARS_PER_TOKEN * limit
    _check_chars = partial(check_chars, max_chars=max_chars, context=limit)
    pictures = Pictures(lm) if getattr(lm, "image_tokenizer", None) is not None else None

    add_error_handlers(app, metrics)

    # Plain ASGI middleware (no BaseHTTPMiddleware: under it request.is_disconnected() never sees the client
    # leave). The key check is outermost: a client without the key gets its 401 before its body is read.
    app.add_middleware(BodyLimit, limit=max_body_bytes, on_reject=lambda: metrics.requests.labels("413").inc())
    if api_key:
        app.add_middleware(APIKey, key=api_key, on_reject=lambda: metrics.requests.labels("401").inc())

    # ---- helpers ---------------------------------------------------------------------------------
    def _config(s: Settings, picture: bool = False):
        """The request's GenerationConfig. A picture (`picture`) is the drawing template's length, with a step per
        image code unless `steps` says otherwise (as generation.draw); max_tokens does not apply to it."""
        if s.model != model_name:
            raise APIError(404, f"model {s.model!r} does not exist; this server serves {model_name!r}", "model",
                           "model_not_found")  # fmt: skip
        over = {"temperature": s.temperature, "top_p": s.top_p, "policy": s.policy, "threshold": s.threshold,
                "cfg_scale": s.cfg_scale, "cache": s.cache, "remask": s.remask}  # fmt: skip
        over = {k: v for k, v in over.items() if v is not None}
        if s.ignore_eos:
            over.update(stop_at_eos=False, trim_at_eos=False)
        if picture:
            n = pictures.tokens_per_image
            shape = {"gen_length": len(pictures.template), "block_length": s.block_length, "steps": s.steps or n}
        elif lm.is_causal:
            return lm.make_config(None, gen_length=s.max_tokens, steps=s.max_tokens, **over)
        else:
            bl = min(s.block_length or defaults.block_length or s.max_tokens, s.max_tokens)
            G = -(-s.max_tokens // bl) * bl  # whole blocks; the text is cut to max_tokens
            steps = s.steps or G * defaults.steps // max(1, defaults.gen_length)
            nb = G // bl
            steps = max(nb, steps - steps % nb)
            shape = {"gen_length": G, "block_length": bl, "steps": min(steps, G)}
        try:
            cfg = lm.make_config(None, **shape, **over)
            cfg.validate()
            check_cache(cfg.cache, lm.model)
        except Exception as e:  # ConfigError names the field
            raise APIError(400, str(e), getattr(e, "field", None)) from None
        return cfg

    def _check(s: Settings, n_prompts: int, picture: bool = False):
        """Checks that need no tokenising, before any: valid Unicode, the model and settings (the config is
        returned), and a number of completions the queue can ever hold."""
        check_text(s.model_dump())
        cfg = _config(s, picture)
        total = n_prompts * s.n
        if total > engine.max_queue:
            param = "prompt" if s.n == 1 or n_prompts > engine.max_queue else "n"
            raise APIError(400, f"{param}: {n_prompts} prompt(s) x n={s.n} = {total} completions; this server "
                                f"queues at most {engine.max_queue} at once (--max-queue): split the request",
                           param, "too_many_completions")  # fmt: skip
        return cfg

    grammars: list[GrammarCompiler] = []  # built on first use (~1 s), then shared

    def _compile(spec: StructuredOutput):
        if not grammars:
            grammars.append(GrammarCompiler(tok, lm.model.config.vocab_size, tok.eos_token_id))
        return grammars[0].compile(spec)

    async def _row_extras(s: Settings, cfg, picture: bool = False) -> dict:
        """The request's structured-output constraint (compiled off the event loop), answer template and logits
        processors: a picture's template and image-codes-only processor; a multimodal model's text holds no
        image tokens (as generation.ask)."""
        text_only = s.response_format is not None and s.response_format.type == "text"
        given = [k for k in ("response_format", "guided_regex", "guided_grammar", "template")
                 if getattr(s, k) is not None and not (k == "response_format" and text_only)]  # fmt: skip
        if picture:
            if given:
                raise APIError(400, f"{given[0]}: a picture has its own template; it takes no {given[0]}", given[0])
            return {"template": pictures.template, "processors": pictures.draw_processors}
        procs = {"processors": pictures.text_processors} if pictures else {}
        if len(given) > 1:
            raise APIError(400, f"{given[1]}: give one of response_format, guided_regex, guided_grammar, template "
                                f"(got {', '.join(given)})", given[1])  # fmt: skip
        if not given:
            return procs
        field = given[0]
        if field != "template" and cfg.remask and not lm.is_causal:
            raise APIError(400, "remask: a sampler that revises committed tokens takes no structured output", "remask")
        if field == "template":
            ids = await tokenize(lambda: tok.encode_template(s.template, "template"), "template")
            if len(ids) > cfg.gen_length:
                raise APIError(400, f"template: has {len(ids)} tokens; max_tokens allows {cfg.gen_length}", "template")
            return {"template": ids, **procs}
        if field == "guided_regex":
            spec = StructuredOutput(regex=s.guided_regex, field=field)
        elif field == "guided_grammar":
            spec = StructuredOutput(grammar=s.guided_grammar, field=field)
        elif s.response_format.type == "json_object":
            spec = StructuredOutput(json_object=True, field="response_format")
        else:
            if s.response_format.json_schema is None:
                raise APIError(400, "response_format.json_schema: required with type 'json_schema'",
                               "response_format.json_schema")  # fmt: skip
            spec = StructuredOutput(json=s.response_format.json_schema.schema_, field="response_format.json_schema")
        return {"constraint": await tokenize(lambda: _compile(spec), field), **procs}

    def _jobs(prompts_ids: list[list[int]], s: Settings, cfg, frames: bool, suffix: list[int] | None = None,
              param: str = "prompt", extras: dict | None = None) -> list[Job]:  # fmt: skip
        loop = asyncio.get_running_loop()
        jobs = []
        for i, ids in enumerate(prompts_ids):
            if len(ids) + cfg.gen_length + len(suffix or []) > limit:
                raise APIError(400, f"prompt {i} has {len(ids)} tokens; with max_tokens (as {cfg.gen_length} "
                                    f"generated) it exceeds the model's context of {limit}", param,
                               "context_length_exceeded")  # fmt: skip
            for k in range(s.n):
                seed = None if s.seed is None else s.seed + k
                jobs.append(Job(ids, cfg, seed, frames, loop, asyncio.Queue(), timeout, suffix=suffix or [],
                                **(extras or {})))  # fmt: skip
        try:
            engine.submit(jobs)
        except QueueFull:
            raise APIError(429, "the request queue is full; retry later", None, "queue_full",
                           {"Retry-After": "1"}) from None  # fmt: skip
        return jobs

    def _chat_ids(messages: list[dict]) -> list[int]:
        return tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def _text(ids: list[int], s: Settings) -> tuple[str, str]:
        """Decoded text (cut at max_tokens and the first stop string) and the finish reason."""
        ids = ids[: s.max_tokens]
        text = tok.decode(ids, skip_special_tokens=True)
        stops = [s.stop] if isinstance(s.stop, str) else (s.stop or [])
        cuts = [text.find(x) for x in stops if x and x in text]
        if cuts:
            return text[: min(cuts)], "stop"
        eos = lm.model.config.eos_token_id
        return text, ("length" if len(ids) >= s.max_tokens and eos not in ids else "stop")

    def _final_prefix(region: list[int]) -> list[int]:
        mask = lm.model.config.mask_token_id
        out = []
        for t in region:
            if t == mask:
                break
            out.append(t)
        return out

    async def _wait(request: Request, jobs: list[Job]) -> list[dict]:
        results = []
        for j in jobs:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(j.events.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        engine.cancel(jobs)
                        raise APIError(499, "client disconnected") from None
                    continue
                if kind == "done":
                    results.append(payload)
                    break
                if kind == "error":
                    raise APIError(504 if payload.startswith("timeout") else 500, payload)
        return results

    def _usage(jobs, results):
        p = sum({id(j.ids): len(j.ids) for j in jobs}.values())  # the n choices of a prompt share its ids
        c = sum(len(r["sequence"]) for r in results)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "nfe": sum(r["nfe"] for r in results)}  # fmt: skip

    def _sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def _stream(request, jobs, s, make_chunk, finish_chunk):
        """OpenAI chunks: text is sent as soon as a left-to-right prefix of the row is final."""
        sent = ["" for _ in jobs]
        try:
            for i, j in enumerate(jobs):
                while True:  # a client that goes away cancels this generator (CancelledError below)
                    kind, payload = await j.events.get()
                    if kind == "error":
                        yield _sse({"error": {"message": payload, "type": "server_error"}})
                        return
                    ids = payload["sequence"] if kind == "done" else _final_prefix(payload)
                    text, reason = _text(ids, s)
                    if kind == "frame":
                        text = text.rstrip("\ufffd")  # an unfinished UTF-8 sequence waits for its last byte
                    if len(text) > len(sent[i]) and text.startswith(sent[i]):
                        yield _sse(make_chunk(i, text[len(sent[i]) :]))
                        sent[i] = text
                    if kind == "done":
                        yield _sse(finish_chunk(i, reason))
                        metrics.finish(payload)
                        break
            yield "data: [DONE]\n\n"
            metrics.requests.labels("200").inc()
        except asyncio.CancelledError:  # the client went away mid-stream
            engine.cancel(jobs)
            raise

    # ---- endpoints -------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "queue": len(engine.waiting), "running": engine.live}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "dlm"}]}  # fmt: skip

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt: empty list", "prompt")
        cfg = _check(body, len(prompts))
        for i, p in enumerate(prompts):
            _check_chars(p, "prompt" if isinstance(body.prompt, str) else f"prompt[{i}]")
        ids = await tokenize(lambda: [tok.encode_prompt(p) for p in prompts], "prompt")
        jobs = _jobs(ids, body, cfg, body.stream, extras=await _row_extras(body, cfg))
        rid, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": now, "model": model_name}
        if body.stream:
            return StreamingResponse(_stream(
                request, jobs, body,
                lambda i, d: {**base, "choices": [{"index": i, "text": d, "logprobs": None, "finish_reason": None}]},
                lambda i, r: {**base, "choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": r}]},
            ), media_type="text/event-stream")  # fmt: skip
        results = await _wait(request, jobs)
        choices = []
        for i, r in enumerate(results):
            text, reason = _text(r["sequence"], body)
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
            metrics.finish(r)
        metrics.requests.labels("200").inc()
        return {**base, "choices": choices, "usage": _usage(jobs, results)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if body.draws and pictures is None:
            raise APIError(400, "modalities: this model has no image tokenizer: it cannot draw", "modalities")
        if body.draws and body.stream:
            raise APIError(400, "stream: a picture comes whole; watch one being drawn with /v1/dlm/denoise and "
                                '"image": true', "stream")  # fmt: skip
        cfg = _check(body, 1, body.draws)
        parsed = [parse_content(m.content, f"messages[{i}].content") for i, m in enumerate(body.messages)]
        check_pictures(parsed, pictures, limit)
        total = 0
        for kind, text, param in (part for parts in parsed for part in parts):
            if kind == "text":
                total += len(text)
                _check_chars(text, param, total)
        if body.draws:  # the caption is the last user message, asked as the model learnt to draw
            last = max((i for i, m in enumerate(body.messages) if m.role == "user"), default=None)
            if last is None or any(kind == "image" for kind, _, _ in parsed[last]):
                raise APIError(400, "messages: a drawing's caption is the last user message, in text",
                               "messages" if last is None else f"messages[{last}].content")  # fmt: skip
            caption = message_text(body.messages[last].content, parsed[last], None)

        def conversation() -> list[dict]:  # runs in the tokenising thread: pictures are decoded off the event loop
            if body.draws:
                return pictures.draw_message(caption)
            return [{"role": m.role, "content": message_text(m.content, p, pictures)}
                    for m, p in zip(body.messages, parsed)]  # fmt: skip

        ids = await tokenize(lambda: _chat_ids(conversation()), "messages")
        extras = await _row_extras(body, cfg, body.draws)
        jobs = _jobs([ids], body, cfg, body.stream, param="messages", extras=extras)
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "object": "chat.completion", "created": now, "model": model_name}
        if body.stream:
            chunk = {**base, "object": "chat.completion.chunk"}
            return StreamingResponse(_stream(
                request, jobs, body,
                lambda i, d: {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": d},
                                                    "finish_reason": None}]},
                lambda i, r: {**chunk, "choices": [{"index": i, "delta": {}, "finish_reason": r}]},
            ), media_type="text/event-stream")  # fmt: skip
        results = await _wait(request, jobs)
        choices = []
        for i, r in enumerate(results):
            if body.draws:
                url = png_data_url(pictures.picture(r["sequence"]))
                message = {"role": "assistant", "content": "", "images": [{"type": "image_url",
                                                                          "image_url": {"url": url}}]}  # fmt: skip
                reason = "stop"
            else:
                text, reason = _text(r["sequence"], body)
                message = {"role": "assistant", "content": text}
            choices.append({"index": i, "message": message, "finish_reason": reason})
            metrics.finish(r)
        metrics.requests.labels("200").inc()
        return {**base, "choices": choices, "usage": _usage(jobs, results)}

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        page = PLAYGROUND.replace("__DLM_MODEL__", json.dumps(model_name)[1:-1])
        return HTMLResponse(page.replace("__DLM_PICTURES__", "true" if pictures else "false"))

    @app.post("/v1/dlm/denoise")
    async def denoise(body: DenoiseRequest, request: Request):
        """Server-sent events, one per denoising step: the generated region's tokens as text pieces, with
        `null` where a position is still masked; the last event has `done: true` and the final text. With
        `suffix`, the span between prompt and suffix is filled (infilling). With `image` (a dlm extension), the
        prompt is a caption to draw: every event also has `image`, the picture so far as a PNG data URL (masked
        patches as a grey checker), and `masked` counts its undecided patches."""
        if body.n != 1:
            raise APIError(400, "denoise streams one answer: n must be 1", "n")
        if body.image and pictures is None:
            raise APIError(400, "image: this model has no image tokenizer: it cannot draw", "image")
        if body.image and body.suffix:
            raise APIError(400, "suffix: a picture is drawn whole; it takes no suffix", "suffix")
        cfg = _check(body, 1, body.image)
        _check_chars(body.prompt, "prompt")
        suffix = None
        if body.suffix:
            if lm.is_causal:
                raise APIError(400, "a causal (autoregressive) model cannot fill before a suffix", "suffix")
            _check_chars(body.suffix, "suffix", len(body.prompt) + len(body.suffix))
            suffix = await tokenize(lambda: tok.encode(body.suffix), "suffix")
        if body.image:  # the caption, asked as the model learnt to draw
            ids = await tokenize(lambda: _chat_ids(pictures.draw_message(body.prompt)), "prompt")
        else:
            ids = await tokenize(lambda: tok.encode_prompt(body.prompt), "prompt")
        (job,) = _jobs([ids], body, cfg, True, suffix, extras=await _row_extras(body, cfg, body.image))
        mask = lm.model.config.mask_token_id
        shown = None if body.image else body.max_tokens  # a picture's tokens are all shown

        async def events():
            step = 0
            try:
                while True:
                    kind, payload = await job.events.get()
                    if kind == "error":
                        yield _sse({"error": {"message": payload}})
                        return
                    if kind == "frame":
                        pieces = [None if t == mask else tok.decode([t]) for t in payload[:shown]]
                        ev = {"step": step, "tokens": pieces, "masked": sum(p is None for p in pieces)}
                        if body.image:
                            ev.update(masked=pictures.masked(payload), image=png_data_url(pictures.picture(payload)))
                        yield _sse(ev)
                        step += 1
                    else:
                        text, reason = ("", "stop") if body.image else _text(payload["sequence"], body)
                        ev = {"done": True, "text": text, "finish_reason": reason, "nfe": payload["nfe"],
                              "steps": payload["steps"]}  # fmt: skip
                        if body.image:
                            ev["image"] = png_data_url(pictures.picture(payload["sequence"]))
                        yield _sse(ev)
                        metrics.finish(payload)
                        metrics.requests.labels("200").inc()
                        return
            except asyncio.CancelledError:
                engine.cancel([job])
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
