"""`dlm` on foreign checkpoint folders, end to end in subprocesses: info, generate --chat, convert."""

import json
import shutil

from ..foreign import write_dream, write_llada, write_llada_tokenizer
from .test_cli import dlm


def test_llada_folder_info_chat_and_convert(tmp_path):
    src = tmp_path / "LLaDA-tiny"
    write_llada(src)
    write_llada_tokenizer(src)

    info = json.loads(dlm("info", src, "--json").stdout)
    assert info["family"] == "llada" and info["config"]["mask_token_id"] == 90
    assert info["parameters"] == 2 * 128 * 32 + 32 + 2 * (4 * 32 * 32 + 3 * 32 * 48 + 2 * 32)
    assert info["tokenizer"]["special_ids"]["mask"] == 90

    p = dlm(
        "generate", "--model", src, "--chat", "hello world", "--system", "be brief", "--dtype", "fp32",
        "--device", "cpu", "--gen-length", "8", "--steps", "8", "--block-length", "8", "--json",
    )  # fmt: skip
    row = json.loads(p.stdout)
    assert row["prompt"] == "hello world" and 1 <= row["nfe"] <= 8 and "<|mdm_mask|>" not in row["text"]

    p = dlm("convert", src, tmp_path / "as-dlm", "--dtype", "bf16")
    assert "wrote dlm folder" in p.stdout
    back = json.loads((tmp_path / "as-dlm" / "config.json").read_text())
    assert back["model_type"] == "dlm" and back["torch_dtype"] == "bfloat16" and back["mask_token_id"] == 90
    dlm("convert", tmp_path / "as-dlm", tmp_path / "llada-again", "--to", "llada")
    assert json.loads((tmp_path / "llada-again" / "config.json").read_text())["model_type"] == "llada"


def test_errors_name_the_problem(tmp_path):
    from typer.testing import CliRunner

    from dlm.cli import app

    def run(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    write_dream(tmp_path / "d", model_type="mamba")
    r = run("generate", "hi", "--model", tmp_path / "d")
    assert r.exit_code == 2 and "model_type 'mamba' is not supported" in r.output
    write_dream(tmp_path / "d2")
    r = run("generate", "--model", tmp_path / "d2", "--dtype", "fp8", "--chat", "hi")
    assert r.exit_code == 2 and "dtype: got 'fp8'" in r.output
    r = run("generate", "hi", "--model", tmp_path / "d2", "--chat", "hi")
    assert r.exit_code == 2 and "either prompts or --chat" in r.output
    r = run("convert", tmp_path / "d2", tmp_path / "out", "--to", "llada")
    assert r.exit_code == 2 and "cannot write the LLaDA layout: shift_logits=True" in r.output
    assert not (tmp_path / "out").exists()


def test_export_without_a_checkpoint_is_an_error(tmp_path):
    """`--export` with nothing under out_dir/checkpoints refuses (it used to write the untrained weights)."""
    from typer.testing import CliRunner

    from dlm import train as train_entry
    from dlm.cli import app

    from .test_training import write_config

    path = write_config(tmp_path, train={"max_steps": 1})
    out = tmp_path / "exported"
    r = CliRunner().invoke(app, ["train", str(path), "--export", str(out)])
    assert r.exit_code == 2, r.output
    assert "--export" in r.output and "no checkpoint" in r.output and str(tmp_path / "run") in r.output
    assert not out.exists()
    assert train_entry.main([str(path), "--export", str(out)]) == 2
    assert not out.exists()


def test_export_leaves_a_running_runs_metrics_alone(tmp_path):
    """Exporting the newest checkpoint of a run that has logged past it (a run still training) must not
    rewrite its metrics.jsonl: only a run that continues drops the records after its checkpoint."""
    from typer.testing import CliRunner

    from dlm.cli import app
    from dlm.training import Trainer, load_run_config

    from .test_training import write_config

    path = write_config(tmp_path, train={"max_steps": 6, "save_every": 4, "eval_every": 0})
    Trainer(load_run_config(path), log=lambda *a: None).train()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_00000006")  # as if the run were still at step 6
    metrics = tmp_path / "run" / "metrics.jsonl"
    before = metrics.read_bytes()
    assert [json.loads(x)["step"] for x in before.decode().splitlines()][-1] == 6  # logged past step 4
    r = CliRunner().invoke(app, ["train", str(path), "--export", str(tmp_path / "exported")])
    assert r.exit_code == 0 and "exported step 4" in r.output, r.output
    assert metrics.read_bytes() == before
    resumed = Trainer(load_run_config(path), log=lambda *a: None)
    assert resumed.resume()  # continuing: steps 5 and 6 will be redone, so their records go
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()][-1] == 4
