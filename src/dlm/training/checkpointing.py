"""Training checkpoints: model, optimizer, scheduler, RNG and data position, written atomically.

Layout: OUT/checkpoints/step_00000100/{shard-0000R-model-00001-of-00001.safetensors (one per rank: model and
optimizer tensors, written by torch.distributed.checkpoint's safetensors writer, resharded on load to any
number of ranks), rng.safetensors, trainer_state.json (data position, scheduler, optimizer hyper-parameters,
RNG)}. A folder is published by one rename, so a crash mid-write never leaves a half checkpoint under a real
name; the newest complete folder is the one resumed. No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .distributed import DistEnv, barrier

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


def _state_dicts(module, optimizer, keep_key) -> tuple[dict, dict]:
    """Model and optimizer state keyed by parameter name (sharded DTensors under FSDP2, plain tensors
    otherwise; DDP's and the checkpoint wrapper's prefixes stripped), only the keys `keep_key` accepts."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(module, optimizer)
    msd = {k: v for k, v in msd.items() if keep_key(k)}
    osd["state"] = {k: v for k, v in osd["state"].items() if keep_key(k)}
    return msd, osd


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it assumes one process when no process group is up: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _fsync_dir(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def save_checkpoint(
    root: Path,
    step: int,
    module,
    optimizer,
    scheduler,
    noise_gen,
    state: dict,
    keep: int = 2,
    *,
    env: DistEnv = DistEnv(),
    keep_key=lambda k: True,
) -> Path:
    """Every rank writes its own shard (torch.distributed.checkpoint, safetensors files) into a hidden
    folder; rank 0 adds trainer_state.json and rng.safetensors and publishes the folder with one rename.
    A process killed at any moment leaves either the complete folder or none under a step_ name."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    root = Path(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    msd, osd = _state_dicts(module, optimizer, keep_key)
    state_tensors = {"model": msd, "optim": osd["state"]}
    writer = HuggingFaceStorageWriter(
        str(tmp), save_distributed=True, fqn_to_index_mapping=_file_groups(state_tensors, FILE_BYTES)
    )
    with _quiet_single_process():
        dcp.save(state_tensors, storage_writer=writer)
    _fault("checkpoint", step)
    if env.is_main:
        rng_tensors, rng_meta = rng_state(noise_gen)
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        groups = [{k: v for k, v in g.items() if k != "params"} for g in osd["param_groups"]]
        full = {
            **state,
            "step": step,
            "world_size": env.world_size,
            "format": "dcp-safetensors",
            "optimizer": {"param_groups": groups},
            "scheduler": scheduler.state_dict(),
            "rng": rng_meta,
        }
        (tmp / STATE_NAME).write_text(json.dumps(full))
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (a resumed run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


FILE_BYTES = 1 << 30  # a rank's shard is cut into files of about this size (each is serialised in memory alone)


def _file_groups(state: dict, max_bytes: int) -> dict[str, int]:
    """Flattened state key (as DCP names it: 'model.x', 'optim.x.exp_avg') -> file index 1..k, tensors in
    order, a new file when the current one passes `max_bytes` (global sizes: every rank computes the same)."""
    out: dict[str, int] = {}
    index, used = 1, 0

    def walk(prefix: str, node) -> None:
        nonlocal index, used
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        size = node.numel() * node.element_size() if isinstance(node, torch.Tensor) else 0
        if used and used + size > max_bytes:
            index, used = index + 1, 0
        out[prefix] = index
        used += size

    walk("", state)
    return out


def _fault(where: str, step: int) -> None:
    """Fault injection for the crash tests: DLM_FAULT=checkpoint:STEP kills this process with SIGKILL after
    its shard of step STEP's checkpoint is written and before the checkpoint is published."""
    spec = os.environ.get("DLM_FAULT", "")
    if spec == f"{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_RE.match(p.name) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, module, optimizer, scheduler, noise_gen, *, keep_key=lambda k: True) -> dict:
    """Restore a checkpoint written by save_checkpoint, on any number of ranks (the shards are resharded
    to this run's layout). Checkpoints from before the sharded format (model.safetensors +
    optimizer.safetensors) load into a one-process run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = Path(path)
    try:
        state = json.loads((path / STATE_NAME).read_text())
        rng_tensors = load_file(str(path / "rng.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({e})") from None
    if state.get("format") != "dcp-safetensors":
        _load_legacy(path, state, getattr(module, "net", module), optimizer)
    else:
        msd, osd = _state_dicts(module, optimizer, keep_key)
        target = {"model": msd, "optim": osd["state"]}
        try:
            with _quiet_single_process():
                dcp.load(target, storage_reader=HuggingFaceStorageReader(str(path)))
        except Exception as e:  # DCP raises CheckpointException / RuntimeError for missing or misshapen tensors
            raise CheckpointError(
                f"{path}: the checkpoint does not fit the configured model ({str(e).splitlines()[0][:300]}); "
                "resume with the settings the run was started with"
            ) from None
        saved_groups = state["optimizer"]["param_groups"]
        if len(saved_groups) != len(osd["param_groups"]):
            raise CheckpointError(
                f"{path}: optimizer has {len(saved_groups)} parameter groups, expected {len(osd['param_groups'])}"
            )
        osd["state"] = target["optim"]
        osd["param_groups"] = [{**g, **saved} for g, saved in zip(osd["param_groups"], saved_groups)]
        set_state_dict(
            module,
            optimizer,
            model_state_dict=target["model"],
            optim_state_dict=osd,
            options=StateDictOptions(strict=False),
        )
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(rng_tensors, state["rng"], noise_gen)
    return state


def _load_legacy(path: Path, state: dict, model, optimizer) -> None:
    try:
        model_state = load_file(str(path / "model.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
    except (OSError, SafetensorError) as e:
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
    optimizer.load_state_dict(
        _unflatten_optimizer({k: v.to(device) for k, v in opt_tensors.items()}, state["optimizer"])
    )
