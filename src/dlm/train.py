"""`python -m dlm.train CONFIG [--set k=v ...] [--resume] [--export DIR]`: the entry point torchrun launches.

    torchrun --nproc-per-node 2 -m dlm.train examples/configs/tiny.yaml --resume

Each process reads RANK / WORLD_SIZE / LOCAL_RANK from torchrun and trains its shard of every global batch
(DDP or FSDP2, from train.distributed). `dlm train CONFIG --nproc N` launches this through torchrun.
"""

from __future__ import annotations

import argparse
import sys


def no_checkpoint_to_export(out_dir) -> str:
    """The message of `--export` on a run with no checkpoint (exporting would write untrained weights)."""
    return f"no checkpoint found under the run's out_dir ({out_dir}/checkpoints); nothing to export: train first"


def main(argv: list[str] | None = None) -> int:
    from .errors import DLMError, InputError
    from .training import Trainer, load_run_config
    from .training import distributed as D

    parser = argparse.ArgumentParser(prog="python -m dlm.train", description="Train a dlm model (torchrun-ready).")
    parser.add_argument("config", help="YAML run config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    parser.add_argument(
        "--export", metavar="DIR", default=None,
        help="no training: write the newest checkpoint in out_dir as a plain dlm folder at DIR",
    )  # fmt: skip
    args = parser.parse_args(argv)
    env = D.DistEnv.from_env()
    try:
        cfg = load_run_config(args.config, args.overrides)
        trainer = Trainer(cfg, env=env)
        resumed = trainer.resume(continuing=not args.export) if (args.resume or args.export) else False
        if args.export and not resumed:
            raise InputError("--export", no_checkpoint_to_export(cfg.out_dir))
        if args.resume and not resumed and env.is_main:
            print(f"no checkpoint in {cfg.out_dir}/checkpoints; starting from scratch", file=sys.stderr)
        if args.export:
            out = trainer.export(args.export)
            if env.is_main:
                print(f"exported step {trainer.step} to {out}")
            D.shutdown()
            return 0
        trainer.train()
    except DLMError as e:
        print(f"error: {e}", file=sys.stderr)
        D.shutdown()
        return 2
    if env.is_main:
        last = trainer.history[-1] if trainer.history else {}
        print(
            f"done: step {trainer.step}, tokens {trainer.tokens_seen}, "
            f"eval_ppl {last.get('eval_ppl', float('nan')):.2f}; model in {cfg.out_dir}/final"
        )
    D.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
