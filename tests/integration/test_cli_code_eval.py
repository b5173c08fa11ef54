"""`dlm eval code` end to end in a subprocess, on a tiny untrained model saved to disk."""

import bisect
import colorsys
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dlm.tokenizer import train_tokenizer
from ..conftest import tiny_lm

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def dlm(*args):
    return subprocess.run(
        [sys.executable, "-m", "dlm.cli", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("code_eval")
    texts = [Path(m.__file__).read_text() for m in (bisect, colorsys, shlex)]
    data = tmp / "test.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = train_tokenizer([], vocab_size=300, texts=texts)
    tiny_lm(tok, max_seq_len=512).save_pretrained(tmp / "m")
    return tmp / "m", data


@pytest.mark.parametrize("task", ["complete", "infill-line", "infill-span"])
def test_eval_code_json(setup, task):
    model, data = setup
    p = dlm(
        "eval", "code", "--model", model, "--data", data, "--task", task, "-n", 5, "--gen-length", 16, "--steps", 16,
        "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["task"] == task and out["n"] == 5 and out["functions"] >= out["usable"] >= 5
    assert {"seconds", "nfe_mean", "examples"} <= set(out) and len(out["examples"]) == 5
    rates = ["parse_rate", "ended_rate"] if task == "complete" else ["exact_match", "ast_valid"]
    assert all(0 <= out[k] <= 1 for k in rates)


def test_eval_code_rejects_an_unknown_task(setup):
    model, data = setup
    p = dlm("eval", "code", "--model", model, "--data", data, "--task", "summarize")
    assert p.returncode == 2 and "--task" in p.stderr and "infill-line" in p.stderr


def test_eval_code_prints_a_summary(setup):
    model, data = setup
    p = dlm("eval", "code", "--model", model, "--data", data, "-n", 3, "--gen-length", 16)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("complete: ") and "of 3 completions parse" in p.stdout
