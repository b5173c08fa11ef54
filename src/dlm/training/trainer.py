"""The Trainer: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast, held-out eval, atomic
checkpoints with exact resume. The noise process is a parameter; the model knows nothing of it."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..configs import to_dict
from ..diffusion import MaskedDiffusion
from ..diffusion.fused_ce import weighted_cross_entropy
from ..errors import CheckpointError, ConfigError
from ..hub.checkpoint import save_pretrained
from ..model import Transformer
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig
from .data import BatchIterator, build_dataset, eval_batches


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda requested but torch sees no CUDA device; allowed here: auto, cpu")
    return torch.device(name)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine to min_ratio at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ar_loss(model, input_ids, attention_mask=None, prompt_lengths=None) -> torch.Tensor:
    """Mean next-token cross-entropy. With a dlm Transformer the LM head and the cross-entropy run fused,
    chunk by chunk, without the (B, L, V) logits (as the diffusion loss does). With `prompt_lengths` (SFT)
    only the answer's tokens (and the EOS padding after it, as in the diffusion SFT loss) are predicted."""
    targets = input_ids[:, 1:].reshape(-1)
    if prompt_lengths is None:
        rw = torch.full((targets.numel(),), 1.0 / max(targets.numel(), 1), device=input_ids.device)
    else:
        pos = torch.arange(1, input_ids.shape[1], device=input_ids.device)[None]
        keep = (pos >= prompt_lengths.to(input_ids.device)[:, None]).float().reshape(-1)
        rw = keep / keep.sum().clamp(min=1.0)
    weight = getattr(model, "head_weight", None)
    if weight is not None:
        h = model(input_ids, attention_mask=attention_mask, return_hidden=True)[:, :-1]
        return weighted_cross_entropy(h.reshape(-1, h.shape[-1]), weight, targets, rw, None)
    logits = model(input_ids, attention_mask=attention_mask)
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets, reduction="none")
    return (ce * rw).sum()


class Trainer:
    def __init__(self, config: RunConfig, *, log=print):
        self.cfg = config
        self.out = Path(config.out_dir)
        self.log = log
        self.device = pick_device(config.train.device)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self._seed_everything(config.train.seed)
        self.tokenizer = self._tokenizer()
        self.model_config = self._model_config()
        self.train_data, self.valid_data = build_dataset(config.data, self.tokenizer, self.out / "data")
        torch.manual_seed(config.train.seed)
        self.model = Transformer(self.model_config).to(self.device)
        self.forward_model = torch.compile(self.model) if config.train.compile else self.model
        self.diffusion = MaskedDiffusion(
            config.diffusion, self.model_config.mask_token_id, shift_logits=self.model_config.shift_logits
        )
        self.optimizer = self._optimizer()
        o = config.optim
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, o.warmup_steps, config.train.max_steps, o.min_lr_ratio)
        )
        self.noise_gen = torch.Generator(device=self.device).manual_seed(config.train.seed + 1)
        self.batches = BatchIterator(self.train_data, config.train.batch_size, seed=config.data.seed)
        self.step = 0
        self.tokens_seen = 0
        self.history: list[dict] = []

    # ---- setup ------------------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _tokenizer(self):
        from ..tokenizer import DLMTokenizer, train_tokenizer
        from .data import document_texts, expand_sources

        tc = self.cfg.tokenizer
        if tc.path:
            return DLMTokenizer.from_dir(tc.path)
        tok_dir = self.out / "tokenizer"
        if (tok_dir / "tokenizer.json").is_file():
            return DLMTokenizer.from_dir(tok_dir)
        files = expand_sources(self.cfg.data.train, "data.train", self.cfg.data.exclude)
        self.log(
            f"training a {tc.vocab_size}-token BPE on {len(files)} files (up to {tc.max_train_bytes / 1e6:.0f} MB "
            "of their text)"
        )
        texts = document_texts(files, self.cfg.data.text_field, tc.max_train_bytes)
        return train_tokenizer([], tc.vocab_size, out_dir=tok_dir, texts=texts)

    def _model_config(self):
        tok = self.tokenizer
        attention = self.cfg.model.attention
        if self.cfg.train.objective == "ar":
            attention = "causal"
        return replace(
            self.cfg.model,
            vocab_size=tok.vocab_size,
            mask_token_id=tok.mask_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            attention=attention,
            max_seq_len=max(self.cfg.model.max_seq_len, self.cfg.data.seq_len),
        )

    def _optimizer(self):
        decay, no_decay = [], []
        for p in self.model.parameters():
            (decay if p.dim() >= 2 else no_decay).append(p)
        o = self.cfg.optim
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused or None)

    def autocast(self):
        if self.cfg.train.dtype == "bf16" and self.device.type in ("cpu", "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- loss / eval ------------------------------------------------------------------------
    def compute_loss(self, batch: dict, generator=None) -> torch.Tensor:
        ids = batch["input_ids"].to(self.device)
        if self.cfg.train.objective == "ar":
            return ar_loss(self.forward_model, ids, prompt_lengths=batch.get("prompt_lengths"))
        if "prompt_lengths" in batch:
            return self.diffusion.sft_loss(
                self.forward_model, ids, batch["prompt_lengths"].to(self.device), generator=generator or self.noise_gen
            ).loss
        return self.diffusion.loss(self.forward_model, ids, generator=generator or self.noise_gen).loss

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out perplexity: ELBO bound (diffusion) or exact (ar); fixed seed, so comparable across steps."""
        if len(self.valid_data) == 0:  # no held-out split (valid_fraction 0 and no valid sources)
            return {}
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(1234)
        nll, tokens = 0.0, 0
        for batch in eval_batches(self.valid_data, self.cfg.train.batch_size, self.cfg.train.eval_batches):
            ids = batch["input_ids"].to(self.device)
            with self.autocast():
                if self.cfg.train.objective == "ar":
                    logits = self.model(ids).float()
                    nll += float(
                        F.cross_entropy(
                            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
                        )
                    )
                    tokens += ids[:, 1:].numel()
                else:
                    nll += float(
                        self.diffusion.elbo_nll(self.model, ids, self.cfg.train.eval_samples, generator=gen).sum()
                    )
                    tokens += ids.numel()
        self.model.train()
        loss = nll / max(tokens, 1)
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": tokens}

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"data": self.batches.state_dict(), "tokens_seen": self.tokens_seen, "config": to_dict(self.cfg)}
        return save_checkpoint(
            self.out / "checkpoints",
            self.step,
            self.model,
            self.optimizer,
            self.scheduler,
            self.noise_gen,
            state,
            keep=self.cfg.train.keep_checkpoints,
        )

    def resume(self, path: str | Path | None = None) -> bool:
        ckpt = Path(path) if path else latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        if not ckpt.is_dir():
            raise CheckpointError(f"{ckpt}: no such checkpoint")
        self._check_resume_config(ckpt)
        state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler, self.noise_gen)
        self.batches.load_state_dict(state["data"])
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.log(f"resumed from {ckpt} at step {self.step}")
        return True

    def _check_resume_config(self, ckpt: Path) -> None:
        """The model and data must be those the run started with; other changes are allowed but named."""
        try:
            saved = json.loads((ckpt / "trainer_state.json").read_text()).get("config", {})
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{ckpt}: unreadable trainer_state.json ({e})") from None
        now = to_dict(self.cfg)
        changed = [
            f"{sec}.{k}"
            for sec in now
            if isinstance(now[sec], dict)
            for k in now[sec]
            if saved.get(sec, {}).get(k, now[sec][k]) != now[sec][k]
        ]
        fatal = [c for c in changed if c.split(".")[0] in ("model", "data", "tokenizer", "diffusion")]
        if fatal:
            raise CheckpointError(
                f"{ckpt}: cannot resume with changed settings {', '.join(fatal)}; "
                "use the run's original config (see run_config.json)"
            )
        if changed:
            self.log(f"resuming with changed settings: {', '.join(changed)}")

    def export(self, out_dir: str | Path | None = None) -> Path:
        out_dir = Path(out_dir) if out_dir else self.out / "final"
        gen = self.cfg.generation
        return save_pretrained(
            self.model,
            out_dir,
            tokenizer=self.tokenizer,
            generation_config=gen,
            diffusion_config=self.cfg.diffusion if self.cfg.train.objective == "diffusion" else None,
        )

    # ---- the loop ---------------------------------------------------------------------------
    def _metrics_writer(self):
        self.out.mkdir(parents=True, exist_ok=True)
        f = open(self.out / "metrics.jsonl", "a")
        tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional

            tb = SummaryWriter(str(self.out / "tb"))
        except Exception:  # tensorboard not installed
            tb = None
        return f, tb

    def _record(self, rec: dict, f, tb) -> None:
        self.history.append(rec)
        f.write(json.dumps(rec) + "\n")
        f.flush()
        if tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    tb.add_scalar(k, v, rec["step"])

    def train(self, max_steps: int | None = None) -> list[dict]:
        """Run until train.max_steps (or `max_steps`, to stop early as if interrupted)."""
        tc = self.cfg.train
        stop_at = min(max_steps, tc.max_steps) if max_steps is not None else tc.max_steps
        (self.out).mkdir(parents=True, exist_ok=True)
        (self.out / "run_config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
        f, tb = self._metrics_writer()
        bar = None
        if tc.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        self.model.train()
        t_last, tok_last = time.perf_counter(), self.tokens_seen
        try:
            while self.step < stop_at:
                loss_sum = 0.0
                for _ in range(tc.grad_accum):
                    batch = next(self.batches)
                    with self.autocast():
                        loss = self.compute_loss(batch) / tc.grad_accum
                    loss.backward()
                    loss_sum += float(loss.detach())
                    self.tokens_seen += batch["input_ids"].numel()
                grad_norm = None
                if self.cfg.optim.grad_clip > 0:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                lr = self.scheduler.get_last_lr()[0]
                rec = {"step": self.step, "loss": loss_sum, "lr": lr, "tokens": self.tokens_seen}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                if self.step % tc.log_every == 0 or self.step == stop_at:
                    now = time.perf_counter()
                    rec["tok_s"] = (self.tokens_seen - tok_last) / max(now - t_last, 1e-9)
                    t_last, tok_last = now, self.tokens_seen
                if (tc.eval_every and self.step % tc.eval_every == 0) or self.step == tc.max_steps:
                    rec.update(self.evaluate())
                self._record(rec, f, tb)
                if bar is not None:
                    post = {"loss": f"{loss_sum:.3f}", "lr": f"{lr:.2e}"}
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
            f.close()
            if tb is not None:
                tb.close()
        return self.history
