"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for every failure: APIError
raised by a route, an unknown path or wrong method, a body that fails validation (400 naming the field)."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


class _ASCIIJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error that quotes bad input (a lone surrogate) still encodes."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def error_response(status, message, param=None, code=None, headers=None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return _ASCIIJSONResponse(body, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, metrics) -> None:
    """Every error the app answers gets the shape above and is counted in `metrics.requests` by status."""

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        metrics.requests.labels(str(e.status)).inc()
        return error_response(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):  # unknown path, wrong method: same error shape
        metrics.requests.labels(str(e.status_code)).inc()
        return error_response(e.status_code, str(e.detail), None, None, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or "body"
        msg = err.get("msg", "invalid request")
        if err.get("type") == "json_invalid":
            param, msg = "body", f"malformed JSON: {msg}"
        metrics.requests.labels("400").inc()
        return error_response(400, f"{param}: {msg}", param, err.get("type"))
