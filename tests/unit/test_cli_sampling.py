"""The sampling options of `dlm generate|infill|eval code|eval quality|eval task` come from GenerationConfig's
fields (dlm.cli.sampling), and every command's DLMError goes through the one handler (exit 2, `error: ...`)."""

import dataclasses

import pytest
import typer.main
from typer.testing import CliRunner

from dlm.cli import app
from dlm.cli import generate as generate_module
from dlm.cli.sampling import INFILL_FIXED, flag
from dlm.errors import InputError
from dlm.sampling import GenerationConfig

COMMAND = typer.main.get_command(app)
SAMPLING_COMMANDS = {("generate",): (), ("infill",): INFILL_FIXED, ("eval", "code"): (), ("eval", "quality"): (),
                     ("eval", "task"): ()}  # fmt: skip


def _options(path) -> dict:
    cmd = COMMAND
    for name in path:
        cmd = cmd.commands[name]
    return {o: p for p in cmd.params for o in p.opts}


@pytest.mark.parametrize("path", list(SAMPLING_COMMANDS), ids=" ".join)
def test_every_generation_field_is_an_option(path):
    opts = _options(path)
    for f in dataclasses.fields(GenerationConfig):
        assert (flag(f.name) in opts) == (f.name not in SAMPLING_COMMANDS[path]), f.name
    assert "--autocast" in opts  # the dtype field; --dtype stays the weights dtype
    assert "--dtype" not in opts or opts["--dtype"].help.startswith("Weights dtype")


def test_documented_spellings_and_command_defaults():
    gen = _options(("generate",))
    for o in ("--gen-length", "--steps", "--block-length", "--temperature", "--policy", "--seed", "--cfg-scale",
              "--threshold", "--factor", "--entropy-bound", "--cache", "--cache-refresh", "--compile"):  # fmt: skip
        assert gen[o].default is None, o
    assert gen["--compile"].secondary_opts == ["--no-compile"]
    code = _options(("eval", "code"))
    assert code["--gen-length"].default == 64 and code["--seed"].default == 0
    assert _options(("eval", "task"))["--seed"].default == 0 and _options(("eval", "quality"))["--seed"].default == 0


def test_options_reach_the_generation_config(monkeypatch):
    seen = {}

    class FakeLM:
        def make_config(self, config, **overrides):
            seen.update(overrides)
            raise InputError("fake", "stop here")

    monkeypatch.setattr(generate_module, "load_model", lambda *a, **k: FakeLM())
    args = ["generate", "hi", "--top-k", "3", "--autocast", "bfloat16", "--compile", "--no-stop-at-eos"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "error: fake: stop here" in r.output
    assert set(seen) == {f.name for f in dataclasses.fields(GenerationConfig)}
    assert seen["top_k"] == 3 and seen["dtype"] == "bfloat16" and seen["compile"] is True
    assert seen["stop_at_eos"] is False and seen["gen_length"] is None and seen["threshold"] is None


def test_every_command_shares_the_error_handler(tmp_path):
    r = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), "--nproc", "0"])
    assert r.exit_code == 2 and "error: --nproc: got 0; must be >= 1" in r.output
    r = CliRunner().invoke(app, ["data", "prepare", "rust"])
    assert r.exit_code == 2 and "error: NAME: got 'rust'" in r.output
    r = CliRunner().invoke(app, ["tasks", "make", "sudoku", "--out", str(tmp_path / "x"), "--option", "givens"])
    assert r.exit_code == 2 and "error: --option: got 'givens'; expected key=value" in r.output
