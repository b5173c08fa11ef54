"""The real `dlm` command, end to end, in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DLM_SHOW_STEPS_DELAY": "0"}


def dlm(*args, check=True):
    p = subprocess.run(
        [sys.executable, "-m", "dlm.cli", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600
    )
    if check and p.returncode != 0:
        raise AssertionError(f"dlm {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = yaml.safe_load(Path("examples/configs/tiny.yaml").read_text())
    cfg["out_dir"] = str(tmp / "run")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = dlm(
        "train", path, "--set", "train.max_steps=30", "--set", "train.eval_every=0", "--set", "train.progress=false"
    )
    assert "done: step 30" in p.stdout
    return tmp / "run" / "final"


def test_generate_batch_json(trained):
    p = dlm(
        "generate",
        "def parse(",
        "import os\n",
        "class A:",
        "--model",
        trained,
        "--gen-length",
        "32",
        "--steps",
        "16",
        "--block-length",
        "16",
        "--json",
    )
    rows = [json.loads(line) for line in p.stdout.strip().splitlines()]
    assert [r["prompt"] for r in rows] == ["def parse(", "import os\n", "class A:"]
    for r in rows:
        assert {"prompt", "text", "nfe", "seconds"} <= set(r)
        assert 1 <= r["nfe"] <= 16 and "<|mask|>" not in r["text"]
    # a batch gives the same text as each prompt alone
    alone = json.loads(
        dlm(
            "generate",
            "import os\n",
            "--model",
            trained,
            "--gen-length",
            "32",
            "--steps",
            "16",
            "--block-length",
            "16",
            "--json",
        ).stdout
    )
    assert alone["text"] == rows[1]["text"]


def test_generate_show_steps_and_seeded_sampling(trained):
    args = ["generate", "def f(", "--model", trained, "--gen-length", 16, "--steps", 16, "--temperature", 1.0]
    a = dlm(*args, "--seed", 5, "--show-steps")
    b = dlm(*args, "--seed", 5)
    assert a.stdout == b.stdout and a.stdout.startswith("def f(")


def test_infill_keeps_prefix_and_suffix(trained):
    p = dlm(
        "infill",
        "--prefix",
        "def add(a, b):\n    return ",
        "--suffix",
        "\n\nprint(add(1, 2))\n",
        "--length",
        "6",
        "--model",
        trained,
        "--json",
    )
    r = json.loads(p.stdout)
    assert r["nfe"] == 6 and "<|mask|>" not in r["text"]
    text = dlm("infill", "--prefix", "x = ", "--suffix", "\n", "--length", "4", "--model", trained).stdout
    assert text.startswith("x = ")


def test_info_and_eval_ppl(trained, tmp_path):
    info = json.loads(dlm("info", trained, "--json").stdout)
    assert info["parameters"] > 100_000 and info["config"]["attention"] == "bidirectional"
    assert info["tokenizer"]["special_ids"]["mask"] == info["config"]["mask_token_id"]
    text = tmp_path / "held.txt"
    text.write_text(Path(__file__).read_text() * 3)
    r = json.loads(
        dlm("eval", "ppl", "--model", trained, "--data", text, "--seq-len", "64", "--samples", "2", "--json").stdout
    )
    assert r["kind"] == "elbo" and r["tokens"] > 0 and 1.0 < r["ppl"] < 1e5


def test_tokenizer_train_command(tmp_path):
    src = Path(__file__).parent
    p = dlm("tokenizer", "train", str(src / "*.py"), "--vocab-size", "400", "--out", tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file() and "400" in p.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["generate", "x", "--model", ""], "--model"),
        (["generate", "x", "--model", "{m}", "--policy", "telepathy"], "policy"),
        (["generate", "x", "--model", "{m}", "--steps", "0"], "steps"),
        (["generate", "x", "--model", "{m}", "--gen-length", "10", "--block-length", "4"], "block_length"),
        (["generate", "x" * 3000, "--model", "{m}"], "max_seq_len"),
        (["generate", "x", "--model", "/nonexistent/model"], "no such checkpoint"),
        (["infill", "--prefix", "a", "--suffix", "b", "--length", "0", "--model", "{m}"], "--length"),
        (["train", "examples/configs/tiny.yaml", "--set", "train.lrr=1"], "train.lrr"),
        (["train", "/nonexistent.yaml"], "config"),
    ],
)
def test_bad_input_is_a_clear_error(trained, args, needle):
    p = dlm(*[a.replace("{m}", str(trained)) for a in args], check=False)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr
