"""A mask token for a checkpoint whose vocabulary has none (`tokenizer.mask_token`), `pkg:` model locations, and
LoRA adapter folders that name their base and load merged (`dlm.hub.adapters`). Training an adapter end to end:
tests/integration/test_lora_adapters.py."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

import dlm
from dlm.builtin import builtin_path
from dlm.errors import CheckpointError, ConfigError
from dlm.hub import load_model, open_checkpoint, save_pretrained
from dlm.hub.adapters import base_reference, resolve_location, write_adapter_folder_files
from dlm.training import building as B
from dlm.training import load_run_config
from dlm.training.objectives import build_objective
from tests.conftest import PYTHON_CORPUS

from ..foreign import write_causal_without_mask

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    texts = [p.read_text() for p in sorted(PYTHON_CORPUS.glob("*/*.py.txt"))]
    return write_causal_without_mask(tmp_path_factory.mktemp("smol") / "base", texts)


def _parts(tmp_path, init_from, *overrides):
    """(run config, opened init checkpoint, tokenizer, base model config) as the Trainer builds them."""
    cfg = load_run_config(
        None, [f"out_dir={tmp_path / 'run'}", f"train.init_from={init_from}", "diffusion.process=block",
               "diffusion.block_size=4", *overrides]
    )  # fmt: skip
    ck = B.open_init_checkpoint(cfg)
    tok = B.build_tokenizer(cfg, tmp_path / "run", None, ck)
    return cfg, ck, tok, B.base_model_config(cfg, tok, ck)


# ---- tokenizer.mask_token ----------------------------------------------------------------------------
def test_without_a_mask_token_the_block_process_says_which_option_gives_one(tmp_path, causal):
    cfg, _, tok, mc = _parts(tmp_path, causal)
    assert mc.mask_token_id is None and tok.mask_token_id is None
    with pytest.raises(ConfigError, match="model.mask_token_id.*tokenizer.mask_token"):
        build_objective(cfg, mc)


def test_a_named_vocabulary_token_becomes_the_mask_token_of_model_and_tokenizer(tmp_path, causal):
    cfg, _, tok, mc = _parts(tmp_path, causal, "tokenizer.mask_token=<filename>")
    assert mc.mask_token_id == tok.token_to_id("<filename>") == tok.mask_token_id == 3
    objective = build_objective(cfg, mc)
    assert objective.process.mask_token_id == 3
    assert (objective.model_config.attention, objective.model_config.mask_token_id) == ("block_causal", 3)
    tok.save(tmp_path / "tok")  # the tokenizer files name it
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["mask_token"] == "<filename>"


@pytest.mark.parametrize(
    "token, why",
    [
        ("<nope>", r"'<nope>' is not a token of the model's vocabulary; its special tokens: '<\|endof.*'<filename>'"),
        ("<|im_end|>", "is the model's EOS token"),
        ("<|im_start|>", "is the model's BOS token"),
    ],
)  # fmt: skip
def test_a_mask_token_outside_the_vocabulary_or_in_use_is_refused_by_name(tmp_path, causal, token, why):
    with pytest.raises(ConfigError, match=rf"^tokenizer.mask_token: .*{why}") as e:
        _parts(tmp_path, causal, f"tokenizer.mask_token={token}")
    assert e.value.field == "tokenizer.mask_token"


def test_a_model_with_a_mask_token_keeps_it(tmp_path):
    ar = builtin_path("builtin-ar")
    _, _, tok, mc = _parts(tmp_path, ar, "tokenizer.mask_token=<|mask|>")  # its own: accepted
    assert mc.mask_token_id == tok.mask_token_id == 3
    with pytest.raises(ConfigError, match="tokenizer.mask_token: '<\\|user\\|>'.*not the mask token the model"):
        _parts(tmp_path, ar, "tokenizer.mask_token=<|user|>")
    with pytest.raises(ConfigError, match="tokenizer.mask_token"):
        load_run_config(None, ["tokenizer.mask_token=''"])


# ---- pkg: locations ----------------------------------------------------------------------------------
def test_pkg_locations_name_files_inside_installed_packages_without_importing_them(tmp_path):
    assert resolve_location("pkg:dlm/builtin/python-ar") == builtin_path("builtin-ar")
    assert open_checkpoint("pkg:dlm/builtin/python-ar").config.attention == "causal"
    assert resolve_location("builtin-ar") == builtin_path("builtin-ar")  # names and paths as before
    with pytest.raises(CheckpointError, match="package 'no_such_pkg_dlm' is not installed"):
        resolve_location("pkg:no_such_pkg_dlm/model.gguf")
    with pytest.raises(CheckpointError, match="pkg:NAME/PATH"):
        resolve_location("pkg:os.path/x")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        open_checkpoint("pkg:dlm/builtin/no-such-model")
    assert base_reference("pkg:x/y") == "pkg:x/y" and base_reference("builtin-ar") == "builtin-ar"
    assert base_reference(str(tmp_path / "a" / ".." / "b")) == str(tmp_path / "b")


# ---- adapter folders -----------------------------------------------------------------------------------
def _adapter(tmp_path, base, *, r=4, seed=1):
    """An adapter folder over `base` (a causal folder) as training writes it: PEFT's files with the base named,
    dlm's config (block-causal, mask token) and tokenizer; lora_B made non-zero so the adapter changes the
    weights. Returns (folder, the merged network computed here)."""
    ck = open_checkpoint(base)
    mc = replace(ck.config, attention="block_causal", block_size=4, shift_logits=True, mask_token_id=3)
    net = load_model(ck, dtype="fp32", config=mc)
    lora = peft.LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    pm = peft.get_peft_model(net, lora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    folder = tmp_path / "adapter"
    pm.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
    raw = json.loads((folder / "adapter_config.json").read_text())
    raw["base_model_name_or_path"] = str(base)
    (folder / "adapter_config.json").write_text(json.dumps(raw))
    tok = dlm.load(base).tokenizer
    tok.set_special_token("mask", 3)
    write_adapter_folder_files(folder, mc, tokenizer=tok)
    return folder, pm.merge_and_unload().eval()


def test_an_adapter_folder_loads_as_its_base_with_the_adapter_merged(tmp_path, causal):
    folder, merged = _adapter(tmp_path, causal)
    lm = dlm.load(folder)
    c = lm.model.config
    assert (c.attention, c.block_size, c.shift_logits, c.mask_token_id) == ("block_causal", 4, True, 3)
    assert lm.tokenizer.mask_token_id == 3 and lm.path == str(folder)
    ids = torch.randint(0, c.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    base = dlm.load(causal).model
    with torch.no_grad():
        got, want = lm.model(ids), merged(ids)
        base_logits = load_model(open_checkpoint(causal), config=c)(ids)
    assert torch.equal(got, want)
    assert not torch.allclose(got, base_logits, atol=1e-3)  # the adapter is in it
    assert all(not n.count("lora_") for n, _ in lm.model.named_parameters())  # a plain network
    assert dlm.hub.count_parameters(open_checkpoint(folder)) == sum(p.numel() for p in base.parameters())
    bf16 = dlm.load(folder, dtype="bf16").model
    assert next(bf16.parameters()).dtype == torch.bfloat16

    moved = tmp_path / "elsewhere" / "adapter"  # the base is named by an absolute path: the folder can move
    shutil.copytree(folder, moved)
    with torch.no_grad():
        assert torch.equal(dlm.load(moved).model(ids), got)
    raw = json.loads((moved / "adapter_config.json").read_text())  # a relative base is relative to the folder
    shutil.copytree(causal, moved.parent / "base")
    raw["base_model_name_or_path"] = "../base"
    (moved / "adapter_config.json").write_text(json.dumps(raw))
    assert open_checkpoint(moved).base.folder == moved / "../base"
    with torch.no_grad():
        assert torch.equal(dlm.load(moved).model(ids), got)

    from safetensors.torch import load_file, save_file  # shipped in bf16 (half the bytes): merged in fp32 as well

    w = moved / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(w)).items()}, str(w))
    with torch.no_grad():
        half = dlm.load(moved).model(ids)
    assert next(dlm.load(moved).model.parameters()).dtype == torch.float32
    assert torch.allclose(half, got, atol=1e-2) and not torch.equal(half, got)

    (tmp_path / "second").mkdir()  # an adapter over an adapter (a LoRA run with init_from an adapter folder)
    second, merged2 = _adapter(tmp_path / "second", folder, seed=2)
    with torch.no_grad():
        assert torch.equal(dlm.load(second).model(ids), merged2(ids))
        assert not torch.allclose(merged2(ids), got, atol=1e-3)


def test_adapter_folders_that_cannot_load_say_why(tmp_path, causal):
    folder, _ = _adapter(tmp_path, causal)
    cfg_path = folder / "adapter_config.json"
    raw = json.loads(cfg_path.read_text())

    cfg_path.write_text(json.dumps({**raw, "base_model_name_or_path": None}))
    with pytest.raises(CheckpointError, match="base_model_name_or_path names no base model"):
        dlm.load(folder)
    cfg_path.write_text(json.dumps({**raw, "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(CheckpointError, match="base model .*gone.* does not open: .*no such checkpoint"):
        dlm.load(folder)
    cfg_path.write_text(json.dumps({**raw, "base_model_name_or_path": "pkg:no_such_pkg_dlm/m.gguf"}))
    with pytest.raises(CheckpointError, match="'no_such_pkg_dlm' is not installed"):
        dlm.load(folder)
    cfg_path.write_text(json.dumps({**raw, "base_model_name_or_path": "builtin-ar"}))  # other shapes
    with pytest.raises(CheckpointError, match="does not fit its base 'builtin-ar': vocab_size 384 vs 8192"):
        dlm.load(folder)
    cfg_path.write_text(json.dumps({**raw, "target_modules": ["q_proj", "k_proj"]}))
    with pytest.raises(CheckpointError, match="adapter tensors do not fit the network"):
        dlm.load(folder)
    cfg_path.write_text(json.dumps(raw))
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing; a dlm adapter folder needs"):
        dlm.load(folder)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing adapter_model.safetensors"):
        dlm.load(folder)


def test_a_lora_export_over_init_from_has_the_fitted_network_config(tmp_path, causal):
    """base_network builds the init_from weights in the objective's config (block-causal, mask token), so a LoRA
    run's merged final/ is the block model, not the causal base."""
    cfg, ck, tok, mc = _parts(tmp_path, causal, "tokenizer.mask_token=<filename>")
    fitted = build_objective(cfg, mc).model_config
    net = B.base_network(cfg, fitted, torch.device("cpu"), ck)
    assert net.config == fitted and net.config.attention == "block_causal" and net.config.mask_token_id == 3
    save_pretrained(net, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["mask_token_id"] == 3
