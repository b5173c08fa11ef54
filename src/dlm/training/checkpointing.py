"""Training checkpoints: model, optimizer, scheduler, RNG and data position, written atomically.

Layout: OUT/checkpoints/step_00000100/{model.safetensors, optimizer.safetensors, trainer_state.json,
rng.safetensors}. A folder is published by one rename, so a crash mid-write never leaves a half
checkpoint under a real name; the newest complete folder is the one resumed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..hub.checkpoint import _atomic_dir

STATE_NAME = "trainer_state.json"
_STEP_RE = re.compile(r"^step_(\d{8})$")


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        _, pid, k = name.split(".", 2)
        state.setdefault(int(pid), {})[k] = t
    for name, v in meta.get("scalars", {}).items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state(noise_gen: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state(), "noise": noise_gen.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, noise_gen: torch.Generator) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    noise_gen.set_state(tensors["noise"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
        if states:
            torch.cuda.set_rng_state_all(states)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, noise_gen, state: dict, keep: int = 2) -> Path:
    root = Path(root)
    final = root / f"step_{step:08d}"
    model_state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not (k == "lm_head.weight" and model.config.tie_embeddings)
    }
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    rng_tensors, rng_meta = rng_state(noise_gen)
    with _atomic_dir(final) as tmp:
        save_file(model_state, str(tmp / "model.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        full = {**state, "step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_meta}
        (tmp / STATE_NAME).write_text(json.dumps(full))
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_RE.match(p.name) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, model, optimizer, scheduler, noise_gen) -> dict:
    path = Path(path)
    try:
        state = json.loads((path / STATE_NAME).read_text())
        model_state = load_file(str(path / "model.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng_tensors = load_file(str(path / "rng.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({e})") from None
    try:
        missing, unexpected = model.load_state_dict(model_state, strict=False)
    except RuntimeError as e:  # shape mismatch: the run config's model differs from the checkpoint's
        raise CheckpointError(
            f"{path}: the checkpoint's weights do not fit the configured model ({e}); "
            "resume with the model settings the run was started with"
        ) from None
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_embeddings)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: model weights do not match the config; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    device = next(model.parameters()).device
    opt_sd = _unflatten_optimizer({k: v.to(device) for k, v in opt_tensors.items()}, state["optimizer"])
    optimizer.load_state_dict(opt_sd)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(rng_tensors, state["rng"], noise_gen)
    return state
