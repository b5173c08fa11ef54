"""The Trainer: the step loop (AdamW, warmup + cosine, clipping, accumulation, bf16 autocast), held-out eval,
atomic checkpoints with exact resume. The parts come from the config: the objective (`objectives`: what the
loss and the held-out NLL are), the network, data and optimizer (`building`), the parallel wrapping
(`distributed`), the state on disk (`state`). The model knows nothing of any of them."""

from __future__ import annotations

import contextlib
import json
import math
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from ..configs import to_dict
from ..errors import CheckpointError, ConfigError
from . import building as B
from . import distributed as D
from . import state as S
from .building import lr_lambda, pick_device
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig
from .data import BatchIterator, eval_batches
from .module import Segmented, TrainingModule
from .objectives import answer_targets, ar_loss, build_objective

__all__ = ["Segmented", "Trainer", "TrainingModule", "answer_targets", "ar_loss", "lr_lambda", "pick_device"]

BATCH_KEYS = ("prompt_lengths", "answer_mask", "segment_ids", "position_ids")  # besides input_ids


class Trainer:
    """One process, or one rank of a torchrun job (DDP or FSDP2, from the environment; see distributed.py).
    Rank 0 writes metrics, the run config and the exported model; every rank writes its checkpoint shard."""

    def __init__(self, config: RunConfig, *, log=print, env: D.DistEnv | None = None):
        self.cfg = config
        self.out = Path(config.out_dir)
        self.env = env or D.DistEnv.from_env()
        self.log = log if self.env.is_main else (lambda *a, **k: None)
        self.device = pick_device(config.train.device, self.env.local_rank)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if config.train.batch_size % self.env.world_size:
            raise ConfigError(
                "train.batch_size",
                f"got {config.train.batch_size}; the global micro-batch must divide evenly over "
                f"{self.env.world_size} ranks",
            )
        D.init(self.env, self.device)
        B.seed_everything(config.train.seed)
        self.init_checkpoint = B.open_init_checkpoint(config)
        self.tokenizer = B.build_tokenizer(config, self.out, self.env, self.init_checkpoint, self.log)
        base_config = B.base_model_config(config, self.tokenizer, self.init_checkpoint)
        self.objective = build_objective(config, base_config)
        self.model_config = self.objective.model_config
        self.diffusion = self.objective.process  # None for objectives without a noise process (ar)
        self.train_data, self.valid_data = B.build_datasets(config, self.tokenizer, self.out, self.env)
        if self.diffusion is not None:  # corpus statistics a process reads (the spindle schedule's token counts)
            self.diffusion.fit(self.train_data)
        torch.manual_seed(config.train.seed)
        # the plain network (PEFT-wrapped under LoRA)
        self.model = B.build_network(config, self.model_config, self.device, self.init_checkpoint)
        compiled = D.compile_model(self.model, self.env) if config.train.compile else None
        self.forward_model = compiled if compiled is not None else self.model
        self.module = TrainingModule(self.model, self.objective, self.env.shard, compiled)
        self.wrapped = D.wrap(self.module, config.train, self.env, self.device)
        self.optimizer, self.scheduler = B.build_optimizer(config, self.module, self.device, self.env)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(config.train.seed + 1)
        self.batches = BatchIterator(
            self.train_data,
            config.train.batch_size,
            seed=config.data.seed,
            rank=self.env.rank,
            world_size=self.env.world_size,
        )
        self.step = 0
        self.tokens_seen = 0
        self.history: list[dict] = []

    def autocast(self):
        return B.autocast(self.cfg, self.device, self.env)

    # ---- loss / eval ------------------------------------------------------------------------
    def _batch_args(self, batch: dict) -> dict:
        """The batch's tensors on the device, as TrainingModule.forward's keyword arguments."""
        return {k: batch[k].to(self.device) for k in BATCH_KEYS if k in batch}

    def compute_loss(self, batch: dict, generator=None) -> torch.Tensor:
        """This rank's loss on its rows of a global batch; the mean over ranks is the one-process loss."""
        ids = batch["input_ids"].to(self.device)
        args = self._batch_args(batch)
        normalizer = None
        counted = self.objective.normalizer_tokens({"input_ids": ids, **args})
        if counted is not None:  # the loss averages over the global batch's tokens: count them over the ranks
            normalizer = D.all_reduce_sum(counted.sum()).clamp(min=1.0) / self.env.world_size
        return self.wrapped(ids, generator=generator or self.noise_gen, normalizer=normalizer, **args)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out perplexity from the objective's NLL (exact for ar, the ELBO bound for diffusion); fixed
        seed, so comparable across steps. SFT data: of the answers given their prompts. Every rank scores the
        whole held-out split (under FSDP2 each forward is collective)."""
        if len(self.valid_data) == 0:  # no held-out split (valid_fraction 0 and no valid sources)
            return {}
        self.module.eval()
        gen = torch.Generator(device=self.device).manual_seed(1234)
        nll, tokens = 0.0, 0
        samples = self.cfg.train.eval_samples
        for batch in eval_batches(self.valid_data, self.cfg.train.batch_size, self.cfg.train.eval_batches):
            ids = batch["input_ids"].to(self.device)
            args = self._batch_args(batch)
            with self.autocast():
                nll += float(self.module(ids, generator=gen, eval_samples=samples, **args))
            tokens += self.objective.scored_tokens({"input_ids": ids, **args})
        self.module.train()
        loss = nll / max(tokens, 1)
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": tokens}

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"data": self.batches.state_dict(), "tokens_seen": self.tokens_seen, "config": to_dict(self.cfg)}
        if self.objective.process is not None and self.objective.process.state_dict():
            state["process"] = self.objective.process.state_dict()
        return save_checkpoint(
            self.out / "checkpoints",
            self.step,
            self.wrapped,
            self.optimizer,
            self.scheduler,
            self.noise_gen,
            state,
            keep=self.cfg.train.keep_checkpoints,
            env=self.env,
            keep_key=S.checkpoint_filter(self.cfg, self.model_config),
        )

    def resume(self, path: str | Path | None = None, *, continuing: bool = True) -> bool:
        """Load the newest checkpoint (or `path`). `continuing`: the run goes on from here, so the metrics it
        logged after that checkpoint are dropped; False (exporting, possibly while the run still trains) leaves
        the run's files alone."""
        ckpt = Path(path) if path else latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        if not ckpt.is_dir():
            raise CheckpointError(f"{ckpt}: no such checkpoint")
        S.check_resume_config(ckpt, self.cfg, self.log)
        keep = S.checkpoint_filter(self.cfg, self.model_config)
        state = load_checkpoint(ckpt, self.wrapped, self.optimizer, self.scheduler, self.noise_gen, keep_key=keep)
        self.batches.load_state_dict(state["data"])
        if self.objective.process is not None:
            self.objective.process.load_state_dict(state.get("process", {}))
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        if self.env.is_main and continuing:
            S.truncate_metrics(self.out / "metrics.jsonl", self.step)
        ranks = state.get("world_size", 1)
        self.log(f"resumed from {ckpt} at step {self.step}" + (f" (saved by {ranks} ranks)" if ranks != 1 else ""))
        return True

    def export(self, out_dir: str | Path | None = None) -> Path:
        """A plain dlm folder (safetensors) from the trained weights, whatever the wrapping (collective: every
        rank calls this); see `state.export_model`. Under LoRA the adapters go to OUT/final-adapter too."""
        return S.export_model(
            self.wrapped,
            self.cfg,
            self.model_config,
            self.tokenizer,
            self.env,
            Path(out_dir) if out_dir else self.out / "final",
            self.objective.diffusion_config,
            lambda device: B.base_network(self.cfg, self.model_config, device, self.init_checkpoint),
        )

    # ---- the loop ---------------------------------------------------------------------------
    def _sync_context(self, last_micro_step: bool):
        """DDP: no gradient all-reduce on the accumulation micro-steps before the last."""
        if not last_micro_step and hasattr(self.wrapped, "no_sync"):
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    def _optimizer_step(self) -> dict:
        """One optimizer step over train.grad_accum micro-batches: its record (loss of the global batch, lr,
        tokens, the CRC of the data indices seen, grad norm)."""
        tc, world = self.cfg.train, self.env.world_size
        loss_sum = torch.zeros((), dtype=torch.float64)
        crc = 0
        self.objective.at_step(self.step)
        for micro in range(tc.grad_accum):
            batch = next(self.batches)
            crc = zlib.crc32(np.ascontiguousarray(self.batches.last_indices, dtype=np.int64).tobytes(), crc)
            with self._sync_context(micro == tc.grad_accum - 1):
                with self.autocast():
                    loss = self.compute_loss(batch) / tc.grad_accum
                loss.backward()
            loss_sum += loss.detach().double().cpu()
            self.tokens_seen += batch["input_ids"].numel() * world
        if world > 1:  # the logged loss is the global batch's (the mean of the ranks')
            loss_sum = D.all_reduce_sum(loss_sum) / world
        grad_norm = None
        if self.cfg.optim.grad_clip > 0:
            params = [p for p in self.module.parameters() if p.requires_grad]
            grad_norm = D.full_norm(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        lr = self.scheduler.get_last_lr()[0]
        rec = {"step": self.step, "loss": float(loss_sum), "lr": lr, "tokens": self.tokens_seen, "data_crc": crc}
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        return rec

    def train(self, max_steps: int | None = None) -> list[dict]:
        """Run until train.max_steps (or `max_steps`, to stop early as if interrupted)."""
        tc = self.cfg.train
        stop_at = min(max_steps, tc.max_steps) if max_steps is not None else tc.max_steps
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "run_config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
        metrics = S.MetricsLog(self.out, self.history, write=self.env.is_main)
        bar = None
        if tc.progress and self.env.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        self.module.train()
        t_last, tok_last = time.perf_counter(), self.tokens_seen
        try:
            while self.step < stop_at:
                rec = self._optimizer_step()
                if self.step % tc.log_every == 0 or self.step == stop_at:
                    now = time.perf_counter()
                    rec["tok_s"] = (self.tokens_seen - tok_last) / max(now - t_last, 1e-9)
                    for k, v in D.peak_memory_gb(self.device).items():  # the largest over ranks
                        rec[k] = round(D.all_reduce_max(v), 3)
                    t_last, tok_last = now, self.tokens_seen
                if (tc.eval_every and self.step % tc.eval_every == 0) or self.step == tc.max_steps:
                    rec.update(self.evaluate())
                metrics.record(rec)
                if bar is not None:
                    post = {"loss": f"{rec['loss']:.3f}", "lr": f"{rec['lr']:.2e}"}
                    if "tok_s" in rec:
                        post["tok/s"] = f"{rec['tok_s']:.0f}"
                    if "eval_ppl" in rec:
                        post["ppl"] = f"{rec['eval_ppl']:.1f}"
                    bar.set_postfix(post)
                    bar.update(1)
                if (tc.save_every and self.step % tc.save_every == 0) or self.step == tc.max_steps:
                    self.save()
            if self.step >= tc.max_steps:
                self.export()
        finally:
            if bar is not None:
                bar.close()
            metrics.close()
        return self.history
