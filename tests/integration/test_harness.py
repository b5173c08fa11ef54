"""The lm-evaluation-harness adapter (`--model dlm`) on the built-in models and a local task file."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")

from dlm.eval.harness import DLMEvalLM  # noqa: E402  (registers "dlm" with lm_eval)

QUESTIONS = [
    {"question": "def add(a, b):\n    return a", "choices": [" + b", " ! b"], "label": 0, "answer": " + b"},
    {"question": "import", "choices": [" os", " )"], "label": 0, "answer": " os"},
    {"question": "for i in", "choices": [" range(10):", " ]]]"], "label": 0, "answer": " range(10):"},
    {"question": "class Stack", "choices": [":", " = = ="], "label": 0, "answer": ":"},
]


class Req:
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def ar():
    return DLMEvalLM(pretrained="builtin-ar")


@pytest.fixture(scope="module")
def diff():
    return DLMEvalLM(pretrained="builtin", mc_samples=8)


def test_causal_loglikelihood_is_exact(ar):
    ctx, cont = "def add(a, b):\n    return a", " + b"
    ((ll, greedy),) = ar.loglikelihood([Req(ctx, cont)])
    c, t = ar._split(ctx, cont)
    ids = torch.tensor([c + t])
    with torch.no_grad():
        logp = F.log_softmax(ar.model(ids)[0].float(), -1)
    want = sum(float(logp[len(c) - 1 + j, tok]) for j, tok in enumerate(t))
    assert math.isclose(ll, want, rel_tol=1e-6) and isinstance(greedy, bool)
    assert c + t == ar.tok.encode_prompt(ctx + cont)


def test_diffusion_loglikelihood_is_seeded_and_ranks_sensible_continuations(diff):
    reqs = [Req(q["question"], ch) for q in QUESTIONS for ch in q["choices"]]
    a = diff.loglikelihood(reqs)
    assert a == diff.loglikelihood(reqs)  # same seed per request: same estimate
    lls = [x[0] for x in a]
    assert all(math.isfinite(x) and x < 0 for x in lls)
    assert sum(lls[2 * i] > lls[2 * i + 1] for i in range(len(QUESTIONS))) >= 3  # code beats line noise


def test_generate_until_cuts_at_stop_and_is_batch_invariant(diff):
    reqs = [Req("def fibonacci(n):", {"until": ["\n\n"], "max_gen_toks": 24}),
            Req("import os\n", {"until": ["\n"], "max_gen_toks": 16})]  # fmt: skip
    both = diff.generate_until(reqs)
    alone = [diff.generate_until([r])[0] for r in reqs]
    assert both == alone and "\n" not in both[1] and "\n\n" not in both[0]


def test_simple_evaluate_runs_a_local_task_file(tmp_path, ar):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tmp_path / "dlm_tiny_mc.yaml").write_text(
        "task: dlm_tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    (tmp_path / "dlm_tiny_gen.yaml").write_text(
        "task: dlm_tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    tm = TaskManager(include_path=str(tmp_path))
    res = simple_evaluate(model=ar, tasks=["dlm_tiny_mc", "dlm_tiny_gen"], task_manager=tm)
    mc, gen = res["results"]["dlm_tiny_mc"], res["results"]["dlm_tiny_gen"]
    assert 0.5 <= mc["acc,none"] <= 1.0  # the AR twin prefers code to line noise
    assert 0.0 <= gen["exact_match,none"] <= 1.0
    assert len(res["samples"]["dlm_tiny_gen"]) == len(QUESTIONS)


def test_causal_rolling_loglikelihood_scores_every_token_once(ar, monkeypatch):
    """Exact: the whole text's log-likelihood, its first token given BOS/EOS; with a context shorter than the
    text, windows overlapping by one token still score every token once (a uniform model shows it)."""
    text = "def add(a, b):\n    return a + b\n"
    ids = ar.tok.encode_prompt(text)
    c = ar.model.config
    prefix = c.bos_token_id if c.bos_token_id is not None else c.eos_token_id
    with torch.no_grad():
        logp = F.log_softmax(ar.model(torch.tensor([[prefix, *ids]]))[0].float(), -1)
    want = sum(float(logp[j, tok]) for j, tok in enumerate(ids))
    (got,) = ar.loglikelihood_rolling([Req(text)])
    assert len(ids) < c.max_seq_len and math.isclose(got, want, rel_tol=1e-5)

    class Uniform(torch.nn.Module):  # log p = -log V for every token: the total counts the scored tokens
        config = c

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.zeros(*x.shape, c.vocab_size) + self.w

    monkeypatch.setattr(ar, "model", Uniform())
    monkeypatch.setattr(c, "max_seq_len", 5)
    (got,) = ar.loglikelihood_rolling([Req(text)])
    assert math.isclose(got, -len(ids) * math.log(c.vocab_size), rel_tol=1e-6)
