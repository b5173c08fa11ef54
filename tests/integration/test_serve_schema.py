"""Schemathesis against the app's own OpenAPI schema: whatever it sends (valid or not), the server answers, and
never with a 5xx. Generated bodies keep their types but have their sizes clamped (max_tokens, n, steps), so
each valid request generates a few tokens and the run stays short."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

import dlm  # noqa: E402
from dlm.serve import create_app  # noqa: E402

app = create_app(dlm.load("builtin"), model_name="builtin", max_batch=4, max_queue=64, timeout=60)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
CLAMP = {"max_tokens": 8, "n": 2, "steps": 8, "block_length": 8}


@schema.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        for k, hi in CLAMP.items():
            v = body.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v > hi:
                body[k] = hi
        if isinstance(body.get("prompt"), list):
            body["prompt"] = body["prompt"][:2]
    return body


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case):
    response = case.call()
    assert response.status_code < 500, (case.body, response.text[:300])
    if response.status_code >= 400:  # an OpenAI-style error body that says what is wrong
        err = response.json().get("error") or {}
        assert err.get("message"), response.text[:300]
