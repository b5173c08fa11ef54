"""`dlm serve` under hostile or awkward input, and its causal (AR twin) path: real uvicorn servers on 127.0.0.1
(test_serve.py's helpers), driven by the real `openai` client and by raw HTTP."""

import dataclasses
import hmac
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from . import test_serve
from .test_serve import Server, _client

lm, server = test_serve.lm, test_serve.server  # its fixtures (module-scoped: one server for this module)

openai = pytest.importorskip("openai")

import dlm  # noqa: E402
from dlm.sampling import GenerationConfig  # noqa: E402
from dlm.serve.engine import Job  # noqa: E402

# The AR twin ends a file here: its first token is EOS (then, past it, a new file begins).
FILE_END = "\n\nif __name__ == '__main__':\n    main()\n"


@pytest.fixture(scope="module")
def ar():
    return dlm.load("builtin-ar")


def _post(url: str, raw: bytes, timeout: float = 60) -> httpx.Response:
    return httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=timeout)


def _wait_for(cond, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _health(s) -> dict:
    return httpx.get(s.url + "/health", timeout=10).json()


# ---- 1. rows share a batch only with an equal config ---------------------------------------------------------
def test_the_batch_key_covers_every_generation_setting_but_the_seed():
    base = GenerationConfig()
    job = Job([5], base, None, False, None, None, 1.0)
    for f in dataclasses.fields(base):
        other = dataclasses.replace(base)
        setattr(other, f.name, object())  # any change at all
        changed = Job([5], other, None, False, None, None, 1.0).key()
        if f.name == "seed":  # seeds are per row (Job.seed / row_seed), not per batch
            assert changed == job.key()
        else:
            assert changed != job.key(), f.name


def test_requests_differing_only_in_ignore_eos_each_get_what_they_get_alone(ar):
    s = Server(ar, model_name="builtin-ar", max_batch=8, max_queue=8)
    try:
        c = _client(s)
        kw = dict(model="builtin-ar", prompt=FILE_END, max_tokens=16, seed=0)
        ignore = {"ignore_eos": True}
        plain = c.completions.create(**kw)
        ignoring = c.completions.create(**kw, extra_body=ignore)
        assert plain.usage.completion_tokens < ignoring.usage.completion_tokens == 16  # EOS ends only one
        assert plain.choices[0].text != ignoring.choices[0].text
        # Both wait behind a long request, so the worker admits them together: one batch if their keys matched.
        long = {"model": "builtin-ar", "prompt": "def f(x):", "max_tokens": 1000, "stream": True, **ignore}
        with ThreadPoolExecutor(2) as ex, httpx.Client(timeout=120) as h:
            with h.stream("POST", s.url + "/v1/completions", json=long) as r:
                lines = r.iter_lines()
                next(lines)  # the long one is running
                a = ex.submit(c.completions.create, **kw)
                b = ex.submit(c.completions.create, **kw, extra_body=ignore)
                assert _wait_for(lambda: _health(s)["queue"] == 2, 10)  # queued together
            # closing the stream drops the long one; the worker then admits the two waiting requests at once
            a, b = a.result(), b.result()
        assert (a.choices[0].text, a.usage.completion_tokens) == (plain.choices[0].text, plain.usage.completion_tokens)
        assert (b.choices[0].text, b.usage.completion_tokens) == (ignoring.choices[0].text, 16)
    finally:
        s.stop()


# ---- 2. text that is not valid Unicode ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, raw, param",
    [
        ("/v1/completions", rb'{"model": "builtin", "prompt": "\udcff"}', "prompt"),
        ("/v1/completions", rb'{"model": "builtin", "prompt": ["ok", "a\ud800b"]}', "prompt[1]"),
        ("/v1/completions", rb'{"model": "builtin", "prompt": "x", "stop": ["\udcff"]}', "stop[0]"),
        ("/v1/completions", rb'{"model": "\udcff", "prompt": "x"}', "model"),
        ("/v1/chat/completions", rb'{"model": "builtin", "messages": [{"role": "user", "content": "\udcff"}]}',
         "messages[0].content"),
        ("/v1/dlm/denoise", rb'{"model": "builtin", "prompt": "x", "suffix": "\udcff"}', "suffix"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_a_400_naming_the_field(server, path, raw, param):
    json.loads(raw)  # valid JSON: "\udcff" is a legal escape, only not a character
    r = _post(server.url + path, raw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"], err


# ---- 3. body size, prompt length --------------------------------------------------------------------------------
def test_oversize_bodies_get_413_and_long_prompts_400_and_the_server_carries_on(server):
    big = json.dumps({"model": "builtin", "prompt": "x" * 2_000_000}).encode()  # > the 1 MiB default
    r = _post(server.url + "/v1/completions", big)  # Content-Length: refused before the body is read
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["param"] == "body" and err["type"] == "invalid_request_error" and str(1 << 20) in err["message"]

    def chunked():  # no Content-Length: refused once the bytes read pass the limit
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    r = httpx.post(server.url + "/v1/completions", content=chunked(), headers={"content-type": "application/json"},
                   timeout=60)  # fmt: skip
    assert r.status_code == 413 and r.json()["error"]["param"] == "body", r.text

    # Under the body limit but longer than any prompt the model's context could hold: 400 before tokenising.
    for path, body, param in [
        ("/v1/completions", {"model": "builtin", "prompt": "x" * 100_000}, "prompt"),
        ("/v1/completions", {"model": "builtin", "prompt": ["x", "y" * 100_000]}, "prompt[1]"),
        ("/v1/chat/completions", {"model": "builtin", "messages": [{"role": "user", "content": "z" * 20_000},
                                                                   {"role": "user", "content": "z" * 20_000}]},
         "messages[1].content"),
        ("/v1/dlm/denoise", {"model": "builtin", "prompt": "x" * 100_000}, "prompt"),
    ]:  # fmt: skip
        r = httpx.post(server.url + path, json=body, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and "characters" in err["message"], err
        assert err["code"] == "context_length_exceeded"

    r = _client(server).completions.create(model="builtin", prompt="import os\n", max_tokens=8, seed=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    m = httpx.get(server.url + "/metrics").text
    assert 'status="413"' in m


def test_the_limits_are_configurable(lm):
    s = Server(lm, model_name="builtin", max_body_bytes=4096, max_prompt_chars=100)
    try:
        r = httpx.post(s.url + "/v1/completions", json={"model": "builtin", "prompt": "x" * 5000}, timeout=30)
        assert r.status_code == 413 and "4096" in r.json()["error"]["message"]
        r = httpx.post(s.url + "/v1/completions", json={"model": "builtin", "prompt": "x" * 101}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and "100" in r.text
        r = httpx.post(s.url + "/v1/completions", json={"model": "builtin", "prompt": "x" * 100, "max_tokens": 4},
                       timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
    finally:
        s.stop()


# ---- 4. more completions than the queue can ever hold -----------------------------------------------------------
def test_more_completions_than_the_queue_holds_is_a_400_not_a_retry_later(lm):
    s = Server(lm, model_name="builtin", max_batch=2, max_queue=3)
    try:
        c = _client(s)
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="builtin", prompt="x", max_tokens=4, n=4)
        err = e.value.body
        assert e.value.status_code == 400 and err["param"] == "n" and "3" in err["message"], err
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="builtin", prompt=["a", "b", "c", "d"], max_tokens=4)
        assert e.value.body["param"] == "prompt" and "3" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="builtin", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                      n=5)  # fmt: skip
        assert e.value.body["param"] == "n"
        r = c.completions.create(model="builtin", prompt="x", max_tokens=4, n=3, seed=0)  # fits: served
        assert len(r.choices) == 3
    finally:
        s.stop()


# ---- 5. the causal path honours --timeout and disconnects --------------------------------------------------------
def test_causal_requests_time_out_like_diffusion_ones(lm, ar):
    answers = []
    for model, name in ((lm, "builtin"), (ar, "builtin-ar")):
        s = Server(model, model_name=name, timeout=0.3)
        try:
            body = {"model": name, "prompt": "def f(x):", "max_tokens": 900, "ignore_eos": True}
            r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
            answers.append((r.status_code, r.json()["error"]["message"], r.json()["error"]["type"]))
            assert _wait_for(lambda s=s: _health(s)["running"] == 0, 3)  # the worker dropped the row at once
            assert 'status="timeout"' in httpx.get(s.url + "/metrics").text
            with httpx.stream("POST", s.url + "/v1/completions", json=dict(body, stream=True), timeout=120) as st:
                events = [json.loads(x[6:]) for x in st.iter_lines() if x.startswith("data: ")]
            assert events[-1]["error"]["message"].startswith("timeout"), events[-1]
        finally:
            s.stop()
    assert answers[0] == answers[1] == (504, "timeout: the request ran longer than 0.3 s", "server_error")


def test_a_causal_client_that_disconnects_frees_its_slot(ar):
    s = Server(ar, model_name="builtin-ar", max_batch=1, max_queue=4)
    body = {"model": "builtin-ar", "prompt": "def f(x):", "max_tokens": 1000, "ignore_eos": True}
    try:
        with httpx.Client(timeout=120) as h:  # a stream, closed after its first chunk
            with h.stream("POST", s.url + "/v1/completions", json=dict(body, stream=True)) as r:
                lines = r.iter_lines()
                next(lines)
                assert _health(s)["running"] == 1
        assert _wait_for(lambda: _health(s)["running"] == 0, 3)
        with pytest.raises(httpx.ReadTimeout):  # a plain request whose client gives up
            httpx.post(s.url + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
        assert _wait_for(lambda: _health(s)["running"] == 0, 3)
        m = httpx.get(s.url + "/metrics").text
        assert 'dlm_requests_total{status="cancelled"} 2.0' in m, m
        # the slot is free: the next request is served without the abandoned 1000-token jobs running to their end
        r = _client(s).completions.create(model="builtin-ar", prompt="import os\n", max_tokens=8)
        assert r.choices[0].finish_reason in ("stop", "length")
        generated = re.search(r"^dlm_generated_tokens_total (\S+)$", httpx.get(s.url + "/metrics").text, re.M)
        assert float(generated.group(1)) == r.usage.completion_tokens  # only this request's tokens were finished
    finally:
        s.stop()


# ---- 6. the API key ----------------------------------------------------------------------------------------------
def test_the_api_key_is_compared_in_constant_time_on_bytes(lm, monkeypatch):
    key = "sékret-κλειδί"  # not ASCII: clients send it as UTF-8 bytes
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    s = Server(lm, model_name="builtin", api_key=key)
    try:

        def models(auth: bytes | None):
            return httpx.get(s.url + "/v1/models", headers={"authorization": auth} if auth is not None else {})

        assert models(f"Bearer {key}".encode()).status_code == 200
        for wrong in (f"Bearer {key[:-1]}X".encode(), f"Bearer {key[:-1]}".encode(), b"Bearer", b"Bearer \xff\xfe",
                      f"bearer {key}".encode(), None):  # fmt: skip
            r = models(wrong)
            assert r.status_code == 401, (wrong, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(s.url + "/v1/completions", json={"model": "builtin", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert calls and all(t == (bytes, bytes) for t in calls)
    finally:
        s.stop()
