"""A run's state on disk: which weights a checkpoint keeps, the checks before resuming, the metrics log
(JSONL, optionally TensorBoard) and the export of the trained weights as a plain dlm folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..configs import to_dict
from ..errors import CheckpointError
from ..hub.checkpoint import save_pretrained
from ..model import build_network
from . import distributed as D
from .config import RunConfig

FATAL_SECTIONS = ("model", "data", "tokenizer", "diffusion", "lora")  # a resumed run must keep these


def checkpoint_filter(cfg: RunConfig, model_config) -> Callable[[str], bool]:
    """Which state goes into a training checkpoint: not the tied head (it is the embedding) and, under LoRA,
    only the adapters (the frozen base comes from train.init_from)."""

    def keep(name: str) -> bool:
        if model_config.tie_embeddings and name.endswith("lm_head.weight"):
            return False
        if cfg.lora.enabled:
            from .lora import is_adapter_key

            return is_adapter_key(name)
        return True

    return keep


def check_resume_config(ckpt: Path, cfg: RunConfig, log=print) -> None:
    """The model and data must be those the run started with; other changes are allowed but named."""
    try:
        saved = json.loads((ckpt / "trainer_state.json").read_text()).get("config", {})
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt}: unreadable trainer_state.json ({e})") from None
    now = to_dict(cfg)
    changed = [
        f"{sec}.{k}"
        for sec in now
        if isinstance(now[sec], dict)
        for k in now[sec]
        if saved.get(sec, {}).get(k, now[sec][k]) != now[sec][k]
    ]
    fatal = [c for c in changed if c.split(".")[0] in FATAL_SECTIONS or c == "train.init_from"]
    if fatal:
        raise CheckpointError(
            f"{ckpt}: cannot resume with changed settings {', '.join(fatal)}; "
            "use the run's original config (see run_config.json)"
        )
    if changed:
        log(f"resuming with changed settings: {', '.join(changed)}")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records a killed run logged after its last checkpoint: they are about to be redone."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


class MetricsLog:
    """OUT/metrics.jsonl (appended, flushed per record) and, when tensorboard is installed, OUT/tb. Records
    always go to `history`; files only on the main rank."""

    def __init__(self, out: Path, history: list[dict], write: bool):
        self.history, self.file, self.tb = history, None, None
        if not write:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional

            self.tb = SummaryWriter(str(out / "tb"))
        except Exception:  # tensorboard not installed
            self.tb = None

    def record(self, rec: dict) -> None:
        self.history.append(rec)
        if self.file is not None:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        for f in (self.file, self.tb):
            if f is not None:
                f.close()


def export_model(
    wrapped, cfg: RunConfig, model_config, tokenizer, env: D.DistEnv, out_dir: Path, diffusion_config, base_network
) -> Path:
    """A plain dlm folder (safetensors) from the trained weights, whatever the wrapping: the full state is
    gathered to rank 0 (collective: every rank calls this), loaded into a fresh network on CPU and saved.
    Under LoRA the adapters are saved to OUT-adapter and merged into `base_network(cpu)` for the folder; with
    train.init_from, OUT-adapter also gets the network's config, generation settings and tokenizer and names its
    base, so it loads by itself (`dlm.hub.adapters`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if env.is_main:
        state = {k.removeprefix("net."): v for k, v in full.items()}
        if cfg.lora.enabled:
            from .lora import is_adapter_key, merge_adapters

            adapters = {k: v for k, v in state.items() if is_adapter_key(k)}
            base = base_network(torch.device("cpu"))
            adapter_dir = out_dir.parent / f"{out_dir.name}-adapter"
            base_name = None
            if cfg.train.init_from:
                from ..hub.adapters import base_reference

                base_name = base_reference(cfg.train.init_from)
            model = merge_adapters(base, cfg.lora, adapters, adapter_dir, base_name)
            if base_name is not None:
                from ..hub.adapters import write_adapter_folder_files

                write_adapter_folder_files(
                    adapter_dir,
                    model_config,
                    tokenizer=tokenizer,
                    generation_config=cfg.generation,
                    diffusion_config=diffusion_config,
                )
        else:
            with torch.device("meta"):  # the gathered tensors become the weights: no second copy
                model = build_network(model_config)
            missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
            missing = [k for k in missing if not (k == "lm_head.weight" and model_config.tie_embeddings)]
            if missing or unexpected:
                raise CheckpointError(f"export: state does not fit the network ({missing[:3]}, {unexpected[:3]})")
        save_pretrained(
            model, out_dir, tokenizer=tokenizer, generation_config=cfg.generation, diffusion_config=diffusion_config
        )
        if cfg.tokenizer.image_tokenizer:  # a multimodal model keeps its image tokenizer (dlm.multimodal)
            from ..hub.pipeline import IMAGE_TOKENIZER_DIR
            from ..multimodal.image_tokenizer import ImageTokenizer

            ImageTokenizer.load(cfg.tokenizer.image_tokenizer).save(out_dir / IMAGE_TOKENIZER_DIR)
    D.barrier()
    return out_dir
