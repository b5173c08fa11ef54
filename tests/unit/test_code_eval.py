import ast
import textwrap

import pytest

from dlm.errors import InputError
from dlm.eval import (
    completion_tasks,
    evaluate_completion,
    evaluate_infill,
    extract_functions,
    fit_to_model,
    function_body_parses,
    infill_tasks,
    signature,
)
from dlm.hub import Completion
from dlm.tokenizer import train_tokenizer
from ..conftest import tiny_lm

SOURCE = textwrap.dedent(
    '''\
    import functools


    def add(a, b):
        """Add two numbers."""
        return a + b


    @functools.lru_cache(maxsize=None)
    def fib(n: int) -> int:
        if n < 2:
            return n
        return fib(n - 1) + fib(n - 2)


    class Stack:
        def __init__(self):
            self.items = []

        def push(self, item):  # a method
            self.items.append(item)
            return len(self.items)

        def doc(self):
            """Not dedentable:
    this docstring line sits at column 0."""
            return 1


    def outer(xs):
        def inner(x):
            return x * 2

        return [inner(x) for x in xs]


    def short(): return 1
    '''
)

FUNCS = [
    "def add(a, b):\n    return a + b\n",
    "def scale(xs, k=2):\n    out = []\n    for x in xs:\n        out.append(x * k)\n    return out\n",
    "def pick(d, key, default=None):\n    if key in d:\n        return d[key]\n    return default\n",
    "def total(items):\n    s = 0\n    for item in items:\n        s += item.price * item.count\n    return s\n",
    "def describe(name: str,\n             age: int) -> str:\n    text = f'{name} is {age}'\n    return text.upper()\n",
]


def test_extract_functions_finds_top_level_defs_and_methods():
    fns = extract_functions([SOURCE, "def broken(:\n    pass\n"], min_lines=2, max_lines=40)
    heads = [f.split("\n", 1)[0] for f in fns]
    assert heads == [
        "def add(a, b):",
        "def fib(n: int) -> int:",  # decorator excluded
        "def __init__(self):",  # methods are dedented
        "def push(self, item):  # a method",
        "def outer(xs):",  # the nested inner() stays inside outer() and is not a task of its own
    ]  # doc() does not parse once dedented; short() is one line
    assert all(ast.parse(f) and not f.startswith((" ", "@")) for f in fns)
    assert "def inner(x):\n        return x * 2" in fns[-1]
    assert extract_functions([SOURCE], min_lines=4, max_lines=5) == [fns[1], fns[4]]
    assert extract_functions([SOURCE, SOURCE], min_lines=2) == fns  # duplicates dropped, order kept


def test_completion_prompts_are_signatures_and_seeded():
    prompts = completion_tasks(FUNCS, 3, seed=0)
    assert len(prompts) == 3 and len(set(prompts)) == 3
    assert all(p.endswith(":\n") and any(f.startswith(p) for f in FUNCS) for p in prompts)
    assert prompts == completion_tasks(FUNCS, 3, seed=0)
    assert prompts != completion_tasks(FUNCS, 3, seed=1)
    assert len(completion_tasks(FUNCS, 100, seed=0)) == len(FUNCS)
    assert "def describe(name: str,\n             age: int) -> str:\n" in completion_tasks(FUNCS, 5, seed=0)


def test_function_body_parses():
    p = "def f(x):\n"
    assert function_body_parses(p, "    y = x + 1\n    return y\n")
    assert function_body_parses(p, "    return x")  # no final newline
    assert function_body_parses(p, "    return x\n\nprint(f(2))\nclass")  # the function ended; the rest is cut
    assert function_body_parses(p, "    if x:\n        return 1\n    return (\n        2\n    )\n")
    assert not function_body_parses(p, "    return x +\n")  # syntax error
    assert not function_body_parses(p, "    return f(x\n")  # cut off mid-expression
    assert not function_body_parses(p, "")
    assert not function_body_parses(p, "   \n\n")
    assert not function_body_parses(p, "return x\n")  # not indented: the body is empty
    assert not function_body_parses(p, "    # only a comment\n")
    # cut by the length budget: the partial last line is dropped, the complete lines are judged
    assert function_body_parses(p, "    y = x + 1\n    return f(x", truncated=True)
    assert not function_body_parses(p, "    y = x + 1\n    return f(x", truncated=False)
    assert not function_body_parses(p, "    if x:\n        retu", truncated=True)  # open block at the cut
    assert not function_body_parses(p, "    return f(", truncated=True)  # nothing complete
    assert function_body_parses(p, "    return x\n\nprint(f(", truncated=True)  # ended: the rest is cut anyway


@pytest.mark.parametrize("kind", ["line", "span"])
def test_infill_tasks_reconstruct_the_function_and_are_seeded(kind):
    fns = extract_functions([SOURCE], min_lines=2) + FUNCS
    tasks = infill_tasks(fns, 50, seed=0, kind=kind)
    assert len(tasks) == len(fns)  # one per function; every one has a body line to remove
    for t in tasks:
        assert t.prefix + t.target + t.suffix == t.source
        assert t.target.strip() and "\n" not in t.target
        assert len(t.prefix) > len(signature(t.source))  # body lines only
        if kind == "line":
            assert t.prefix.endswith((" ", "\t")) and t.suffix.startswith("\n") and t.target == t.target.strip()
    if kind == "span":
        assert any(t.suffix[0] != "\n" for t in tasks)  # spans can stop mid-line
    assert tasks == infill_tasks(fns, 50, seed=0, kind=kind)
    assert tasks != infill_tasks(fns, 50, seed=1, kind=kind)
    assert len(infill_tasks(fns, 3, seed=0, kind=kind)) == 3
    with pytest.raises(InputError, match="kind"):
        infill_tasks(fns, 3, seed=0, kind="word")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([], vocab_size=300, texts=[SOURCE * 20, "".join(FUNCS) * 20])


def _lm(tok, attention="bidirectional"):
    return tiny_lm(tok, attention, max_seq_len=256)


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_evaluate_completion_end_to_end(tok, attention):
    lm = _lm(tok, attention)
    prompts = completion_tasks(FUNCS, 4, seed=0)
    res = evaluate_completion(
        lm, prompts, gen_length=16, steps=8, block_length=8, temperature=0.0, seed=0, batch_size=3
    )
    assert {"n", "parse_rate", "ended_rate", "examples", "seconds", "nfe_mean"} <= set(res)
    assert res["n"] == 4 and 0 <= res["parse_rate"] <= 1 and 0 <= res["ended_rate"] <= 1
    assert [e["prompt"] for e in res["examples"]] == prompts
    assert all(
        e["parses"] == function_body_parses(e["prompt"], e["completion"], truncated=not e["ended"])
        for e in res["examples"]
    )
    assert res["nfe_mean"] >= 1


@pytest.mark.parametrize("attention", ["bidirectional", "causal", "block_causal"])
@pytest.mark.parametrize("heal", [True, False])
def test_evaluate_infill_end_to_end_and_with_an_oracle(tok, attention, heal, monkeypatch):
    """Full attention fills the gap seeing the suffix; the AR twin and a block model cannot see it, continue the
    prefix and are scored on the line they write (the oracle appends junk after it for them)."""
    lm = _lm(tok, attention)
    tasks = infill_tasks(FUNCS, 4, seed=0, kind="line") + infill_tasks(FUNCS, 3, seed=0, kind="span")
    res = evaluate_infill(lm, tasks, steps=4, seed=0, heal=heal, keep_rows=True)
    assert [r["target"] for r in res["rows"]] == [t.target for t in tasks]
    assert {"n", "exact_match", "ast_valid", "examples", "seconds", "nfe_mean"} <= set(res)
    assert res["n"] == 7 and 0 <= res["exact_match"] <= 1 and 0 <= res["ast_valid"] <= 1
    assert len(res["examples"]) == 5 and res["examples"][0]["target"] == tasks[0].target

    calls, shown = [], []

    def oracle(prefix, suffix, length, **kw):  # the original text between what the model is shown
        src = next(t.source for t in tasks if t.source.startswith(prefix) and t.source.endswith(suffix))
        calls.append(length)
        shown.append(prefix)
        middle = src[len(prefix) : len(src) - len(suffix)]
        return Completion(prefix, middle + ("\n    junk" if attention != "bidirectional" else ""), [], 1, 1, 0.0)

    monkeypatch.setattr(lm, "infill", oracle)
    res = evaluate_infill(lm, tasks, seed=0, heal=heal)
    assert res["exact_match"] == 1.0 and res["ast_valid"] == 1.0
    assert calls == [len(tok.encode(t.target, parse_special=False)) for t in tasks] or heal
    if heal:  # the model is shown the prefix without its trailing whitespace, and writes that itself
        assert shown == [t.prefix.rstrip() for t in tasks] and shown != [t.prefix for t in tasks]
    else:
        assert shown == [t.prefix for t in tasks]


@pytest.mark.parametrize("heal", [True, False])
def test_completion_oracle_parses_and_healing_feeds_the_header_without_its_newline(tok, heal, monkeypatch):
    lm = _lm(tok)
    prompts = completion_tasks(FUNCS, 5, seed=0)
    fed = []

    def oracle(batch, **kw):  # the rest of the original function, then the start of a new statement
        fed.extend(batch)
        rest = [next(f for f in FUNCS if f.startswith(p.rstrip()))[len(p.rstrip()) :] for p in batch]
        return [Completion(p, r[0 if heal else 1 :] + "\nprint(1)", [0] * 16, 1, 1, 0.0) for p, r in zip(batch, rest)]

    monkeypatch.setattr(lm, "generate", oracle)
    res = evaluate_completion(lm, prompts, gen_length=16, seed=0, batch_size=2, heal=heal)
    assert res["parse_rate"] == 1.0 and res["ended_rate"] == 1.0
    assert fed == ([p[:-1] for p in prompts] if heal else prompts)
    assert all(not e["completion"].startswith("\n") for e in res["examples"])


def test_fit_to_model_drops_what_does_not_fit(tok):
    lm = _lm(tok)
    long_fn = "def big():\n" + "    x = 'a very long line of text that takes many tokens'\n" * 30
    assert fit_to_model(lm, FUNCS + [long_fn]) == FUNCS
    assert fit_to_model(lm, FUNCS, task="complete", gen_length=16) == FUNCS
    assert fit_to_model(lm, FUNCS, task="complete", gen_length=256) == []


@pytest.mark.parametrize("fill", ["\n", "  ", "# a comment", "\n    # a comment\n"])
def test_a_blank_or_comment_fill_is_never_ast_valid(tok, fill, monkeypatch):
    lm = _lm(tok)
    tasks = infill_tasks(FUNCS, 5, seed=0, kind="line")  # deleting a line often leaves valid code
    monkeypatch.setattr(lm, "infill", lambda prefix, suffix, length, **kw: Completion(prefix, fill, [], 1, 1, 0.0))
    res = evaluate_infill(lm, tasks, seed=0, heal=False)
    assert res["ast_valid"] == 0.0 and res["exact_match"] == 0.0
