"""Bounds on what bad input can cost the server: the API key and body-size checks (plain ASGI middleware, so
that request.is_disconnected() still sees a client leave), lone surrogates and over-long prompts rejected
before anything is tokenised, and tokenising in a worker thread rather than on the event loop."""

from __future__ import annotations

import hmac

from starlette.concurrency import run_in_threadpool

from .errors import APIError, error_response

MAX_BODY_BYTES = 1 << 20  # default request body limit (1 MiB)
CHARS_PER_TOKEN = 32  # default prompt limit: this many characters per token of the model's context


def bad_text(value, path: str = "") -> str | None:
    """The path (`prompt`, `prompt[1]`, `messages[0].content`) of the first string that is not valid Unicode
    (a lone surrogate: JSON allows "\\udcff", UTF-8 and the tokenizer do not), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
    elif isinstance(value, dict):
        for k, v in value.items():
            if (bad := bad_text(v, f"{path}.{k}" if path else str(k))) is not None:
                return bad
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if (bad := bad_text(v, f"{path}[{i}]")) is not None:
                return bad
    return None


def check_text(value) -> None:
    """A 400 naming the first string in `value` (a request body's dump) that is not valid Unicode."""
    if (bad := bad_text(value)) is not None:
        raise APIError(400, f"{bad}: not valid Unicode text (it holds a lone surrogate such as \\udcff)", bad,
                       "invalid_text")  # fmt: skip


def check_chars(text: str, param: str, total: int | None = None, *, max_chars: int, context: int) -> None:
    """A 400 when `text` (or `total` characters, counted across several fields) is over `max_chars`."""
    n = len(text) if total is None else total
    if n > max_chars:
        raise APIError(400, f"{param}: {n} characters; this server takes at most {max_chars} (the model's "
                            f"context is {context} tokens)", param, "context_length_exceeded")  # fmt: skip


async def tokenize(fn, param: str):
    """Tokenise in a worker thread: a long prompt must not stall the event loop (every stream)."""
    try:
        return await run_in_threadpool(fn)
    except APIError:  # raised by `fn` itself (a picture that does not decode): it names its field
        raise
    except Exception as e:  # input the tokenizer rejects is bad input, not a server error
        raise APIError(400, f"{param}: {e}", param) from None


class APIKey:
    """ASGI middleware: /v1/* needs `Authorization: Bearer KEY`. The header's bytes, as sent, are compared with
    the expected ones (KEY as UTF-8) in constant time."""

    def __init__(self, app, key: str, on_reject=None):
        self.app, self.expected, self.on_reject = app, f"Bearer {key}".encode(), on_reject

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            sent = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
            if not hmac.compare_digest(sent, self.expected):
                if self.on_reject:
                    self.on_reject()
                msg = "missing or wrong API key (Authorization: Bearer KEY)"
                return await error_response(401, msg, None, "invalid_api_key")(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets a 413 without being read (by Content-Length) or
    as soon as the bytes read pass the limit (a chunked body). The body is read here, whole, and handed on."""

    def __init__(self, app, limit: int, on_reject=None):
        self.app, self.limit, self.on_reject = app, limit, on_reject

    async def _reject(self, scope, receive, send) -> None:
        if self.on_reject:
            self.on_reject()
        msg = f"request body is larger than this server's limit of {self.limit} bytes"
        await error_response(413, msg, "body", "request_too_large")(scope, receive, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.limit:
                        return await self._reject(scope, receive, send)
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before its body arrived
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._reject(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then http.disconnect, when it comes

        await self.app(scope, replay, send)
