"""Data-parallel training on PyTorch's own engine, applied to the plain model from outside.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK (and the rendezvous); `DistEnv.from_env()` reads them and
`init()` starts the process group: gloo on CPU, nccl on CUDA. `wrap()` applies DDP or FSDP2 (`fully_shard`
on each transformer block, then on the root) and, optionally, activation checkpointing of each block.
The network, the noise process and the sampler know nothing of any of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistEnv":
        """The torchrun environment; one process when WORLD_SIZE is unset."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as e:
            raise ConfigError("WORLD_SIZE/RANK/LOCAL_RANK", f"not integers in the environment ({e})") from None
        if world < 1 or not 0 <= rank < world:
            raise ConfigError("RANK", f"got RANK={rank}, WORLD_SIZE={world}; need 0 <= RANK < WORLD_SIZE")
        return cls(rank, world, local)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size


def init(env: DistEnv, device: torch.device) -> None:
    """Start the process group for a multi-process run (no-op for one process or when already started)."""
    if not env.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, device_id=None)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_reduce_max(value: float) -> float:
    if dist.is_initialized():
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)
    return value


def peak_memory_gb(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory so far (and the CUDA allocator's peak on a GPU), in GiB."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_gb": rss / (2**30 if sys.platform == "darwin" else 2**20)}
    if device.type == "cuda":
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def apply_activation_checkpointing(model: nn.Module, block_type: type) -> None:
    """Recompute each block's activations in backward instead of keeping them (torch's checkpoint wrapper,
    non-reentrant). Parameter names are unchanged (the wrapper's prefix is stripped from state dicts)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing as _apply,
        checkpoint_wrapper,
    )

    _apply(
        model,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: isinstance(m, block_type),
    )


def fully_shard_model(root: nn.Module, blocks: list[nn.Module], mixed_precision: str, device: torch.device) -> None:
    """FSDP2: shard each block, then the root (which keeps embeddings, final norm and head). With
    mixed_precision='bf16' parameters are gathered in bf16 and gradients reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(root, mesh=mesh, mp_policy=mp)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: FSDP2's and activation checkpointing's units, torch.compile's under torchrun."""
    from ..model.transformer import Block

    return [m for m in model.modules() if isinstance(m, Block)]


def compile_model(model: nn.Module, env: DistEnv):
    """train.compile: the compiled view of the model (one process), or None after compiling block by block in
    place (torchrun: so FSDP2/DDP hooks stay outside the graphs)."""
    if env.distributed:
        for layer in blocks(model):
            layer.compile()
        return None
    return torch.compile(model)


def wrap(module: nn.Module, train, env: DistEnv, device: torch.device) -> nn.Module:
    """The training module as the step loop drives it: activation checkpointing of each block
    (train.activation_checkpointing), then DDP or FSDP2 (train.distributed) under torchrun."""
    from ..model.transformer import Block

    if train.activation_checkpointing:
        apply_activation_checkpointing(module, Block)
    if not env.distributed:
        return module
    if train.distributed == "fsdp":
        fully_shard_model(module, blocks(module), train.dtype, device)
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def full_norm(value) -> float:
    """A gradient norm as a float (FSDP2 returns a DTensor)."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)
