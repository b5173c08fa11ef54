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

import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..configs import to_dict
from ..diffusion import NoiseProcess, build_process
from ..diffusion.fused_ce import weighted_cross_entropy
from ..errors import CheckpointError, ConfigError
from ..hub.checkpoint import save_pretrained
from ..model import Transformer
from ..model.transformer import Block
from . import distributed as D
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig
from .data import BatchIterator, build_dataset, eval_batches


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda requested but torch sees no CUDA device; allowed here: auto, cpu")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine to min_ratio at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def answer_targets(input_ids, prompt_lengths) -> torch.Tensor:
    """(B, L-1) 1.0 where a next-token target is an answer token (SFT), else 0.0."""
    pos = torch.arange(1, input_ids.shape[1], device=input_ids.device)[None]
    return (pos >= prompt_lengths.to(input_ids.device)[:, None]).float()


def ar_loss(
    model, input_ids, attention_mask=None, prompt_lengths=None, normalizer=None, answer_mask=None
) -> torch.Tensor:
    """Mean next-token cross-entropy. With a dlm Transformer the LM head and the cross-entropy run fused,
    chunk by chunk, without the (B, L, V) logits (as the diffusion loss does). With `prompt_lengths` (SFT)
    only the answer's tokens (and the EOS padding after it, as in the diffusion SFT loss) are predicted,
    summed and divided by `normalizer` (default: their number here; data parallel passes the global number
    over the world size, so the ranks' mean is the one-process loss). `answer_mask` (B, L) marks the answer
    tokens directly (packed rows)."""
    targets = input_ids[:, 1:].reshape(-1)
    if answer_mask is not None:
        keep = answer_mask[:, 1:].float().reshape(-1)
        rw = keep / (keep.sum().clamp(min=1.0) if normalizer is None else normalizer)
    elif prompt_lengths is None:
        rw = torch.full((targets.numel(),), 1.0 / max(targets.numel(), 1), device=input_ids.device)
    else:
        keep = answer_targets(input_ids, prompt_lengths).reshape(-1)
        rw = keep / (keep.sum().clamp(min=1.0) if normalizer is None else normalizer)
    weight = getattr(model, "head_weight", None)
    if weight is not None:
        h = model(input_ids, attention_mask=attention_mask, return_hidden=True)[:, :-1]
        return weighted_cross_entropy(h.reshape(-1, h.shape[-1]), weight, targets, rw, None)
    logits = model(input_ids, attention_mask=attention_mask)
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets, reduction="none")
    return (ce * rw).sum()


class Segmented:
    """The network seen through a packed batch: each example attends only within itself (causally for the AR
    twin) and has its own positions. Stands in for the network in the loss functions, which call it and read
    `head_weight` / `head` as they do on the network."""

    def __init__(self, net, segment_ids: torch.Tensor, position_ids: torch.Tensor, causal: bool):
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        if causal:
            L = segment_ids.shape[1]
            same &= torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
        self.net, self.mask, self.positions = net, same[:, None], position_ids

    def __call__(self, input_ids, attention_mask=None, **kw):
        return self.net(input_ids, attention_mask=self.mask, position_ids=self.positions, **kw)

    @property
    def head_weight(self):
        return getattr(self.net, "head_weight", None)

    def head(self, hidden):
        return self.net.head(hidden)


class TrainingModule(nn.Module):
    """What DDP and FSDP2 wrap: the network with its objective, so that every use of the weights (the fused
    head + cross-entropy included) happens inside one forward. `shard` = (rank, world): this process holds
    rows rank::world of each global batch, and the noise is drawn for the global batch (see MaskedDiffusion).
    Packed SFT batches (data.pack) bring answer_mask, segment_ids and position_ids."""

    def __init__(self, net: nn.Module, objective: str, diffusion: NoiseProcess, shard=(0, 1), compiled=None):
        super().__init__()
        self.net = net
        self.objective = objective
        self.diffusion = diffusion
        self.shard = shard
        object.__setattr__(self, "_call", net if compiled is None else compiled)  # compiled view, not a submodule

    def forward(
        self,
        input_ids,
        prompt_lengths=None,
        generator=None,
        ar_normalizer=None,
        eval_samples: int = 0,
        answer_mask=None,
        segment_ids=None,
        position_ids=None,
    ):
        net = self.net if eval_samples else self._call
        if segment_ids is not None:
            net = Segmented(net, segment_ids, position_ids, causal=self.objective == "ar")
        if eval_samples:
            return self._eval_nll(net, input_ids, eval_samples, generator, prompt_lengths, answer_mask)
        if self.objective == "ar":
            return ar_loss(
                net, input_ids, prompt_lengths=prompt_lengths, normalizer=ar_normalizer, answer_mask=answer_mask
            )
        if prompt_lengths is not None or answer_mask is not None:
            return self.diffusion.sft_loss(
                net, input_ids, prompt_lengths, generator=generator, shard=self.shard, answer_mask=answer_mask
            ).loss
        return self.diffusion.loss(net, input_ids, generator=generator, shard=self.shard).loss

    def _eval_nll(self, net, ids, samples, generator, prompt_lengths=None, answer_mask=None) -> torch.Tensor:
        """Summed NLL (nats) of the batch: exact (ar) or the ELBO bound (diffusion); for SFT rows, of the
        answers given their prompts."""
        answer = answer_mask
        if answer is None and prompt_lengths is not None:
            answer = torch.arange(ids.shape[1], device=ids.device)[None] >= prompt_lengths[:, None]
        if self.objective == "ar":
            logits = net(ids).float()
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
            if answer is not None:
                ce = ce * answer[:, 1:].reshape(-1)
            return ce.sum()
        return self.diffusion.elbo_nll(net, ids, samples, generator=generator, maskable=answer).sum()


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
        self._seed_everything(config.train.seed)
        self.init_checkpoint = None
        if config.train.init_from:
            from ..hub.loading import open_checkpoint

            self.init_checkpoint = open_checkpoint(config.train.init_from)
        self.tokenizer = self._tokenizer()
        self.model_config = self._model_config()
        self.train_data, self.valid_data = self._datasets()
        torch.manual_seed(config.train.seed)
        self.model = self._build_network(self.device)  # the plain network (PEFT-wrapped under LoRA)
        compiled = None
        if config.train.compile:
            if self.env.distributed:  # compile block by block so FSDP2/DDP hooks stay outside the graphs
                for layer in self._blocks(self.model):
                    layer.compile()
            else:
                compiled = torch.compile(self.model)
        self.forward_model = compiled if compiled is not None else self.model
        self.diffusion = build_process(config.diffusion, self.model_config)
        self.module = TrainingModule(self.model, config.train.objective, self.diffusion, self.env.shard, compiled)
        self.wrapped = self._parallelize(self.module)
        self.optimizer = self._optimizer()
        o = config.optim
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, o.warmup_steps, config.train.max_steps, o.min_lr_ratio)
        )
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

    # ---- setup ------------------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _tokenizer(self):
        from ..tokenizer import DLMTokenizer

        tc = self.cfg.tokenizer
        if tc.path:
            return DLMTokenizer.from_dir(tc.path)
        if self.init_checkpoint is not None:
            from ..hub.hf_tokenizer import load_tokenizer

            ck = self.init_checkpoint
            return load_tokenizer(ck.folder, ck.config, ck.gguf_file)
        tok_dir = self.out / "tokenizer"
        if (tok_dir / "tokenizer.json").is_file():
            return DLMTokenizer.from_dir(tok_dir)
        if self.env.distributed:  # rank 0 trains the BPE, the others read it
            if self.env.is_main:
                self._train_tokenizer(tok_dir)
            D.barrier()
            return DLMTokenizer.from_dir(tok_dir)
        return self._train_tokenizer(tok_dir)

    def _train_tokenizer(self, tok_dir: Path):
        from ..tokenizer import train_tokenizer
        from .data import document_texts, expand_sources

        tc = self.cfg.tokenizer
        files = expand_sources(self.cfg.data.train, "data.train", self.cfg.data.exclude)
        self.log(
            f"training a {tc.vocab_size}-token BPE on {len(files)} files (up to {tc.max_train_bytes / 1e6:.0f} MB "
            "of their text)"
        )
        texts = document_texts(files, self.cfg.data.text_field, tc.max_train_bytes)
        return train_tokenizer([], tc.vocab_size, out_dir=tok_dir, texts=texts)

    def _datasets(self):
        """Rank 0 tokenises into the cache first; the other ranks then memory-map the same files."""
        if self.env.distributed and not self.env.is_main:
            D.barrier()
            return build_dataset(self.cfg.data, self.tokenizer, self.out / "data")
        data = build_dataset(self.cfg.data, self.tokenizer, self.out / "data")
        if self.env.distributed:
            D.barrier()
        return data

    def _model_config(self):
        if self.init_checkpoint is not None:
            mc = self.init_checkpoint.config
            if self.cfg.train.objective == "ar" and mc.attention != "causal":
                raise ConfigError(
                    "train.objective", f"ar needs a causal model; {self.cfg.train.init_from} is {mc.attention}"
                )
            if max(self.cfg.data.seq_len, 1) > mc.max_seq_len:
                raise ConfigError(
                    "data.seq_len", f"{self.cfg.data.seq_len} exceeds the model's max_seq_len {mc.max_seq_len}"
                )
            return mc
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

    def _base_network(self, device) -> Transformer:
        """The network before LoRA: the init_from checkpoint's weights (fp32), or a fresh seeded init."""
        if self.init_checkpoint is not None:
            from ..hub.loading import load_model

            return load_model(self.init_checkpoint, device=device, dtype="fp32")
        torch.manual_seed(self.cfg.train.seed)
        return Transformer(self.model_config).to(device)

    def _build_network(self, device) -> nn.Module:
        model = self._base_network(device)
        if self.cfg.lora.enabled:
            from .lora import apply_lora

            model = apply_lora(model, self.cfg.lora, device)
        return model

    @staticmethod
    def _blocks(model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if isinstance(m, Block)]

    def _parallelize(self, module: TrainingModule) -> nn.Module:
        tc = self.cfg.train
        if tc.activation_checkpointing:
            D.apply_activation_checkpointing(module, Block)
        if not self.env.distributed:
            return module
        if tc.distributed == "fsdp":
            D.fully_shard_model(module, self._blocks(module), tc.dtype, self.device)
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def _optimizer(self):
        decay, no_decay = [], []
        for p in self.module.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        o = self.cfg.optim
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = self.device.type == "cuda" and not (self.env.distributed and self.cfg.train.distributed == "fsdp")
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused or None)

    def autocast(self):
        fsdp_mp = self.env.distributed and self.cfg.train.distributed == "fsdp"  # FSDP2's policy casts instead
        if self.cfg.train.dtype == "bf16" and self.device.type in ("cpu", "cuda") and not fsdp_mp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- loss / eval ------------------------------------------------------------------------
    def _batch_args(self, batch: dict) -> dict:
        """The batch's tensors on the device, as TrainingModule.forward's keyword arguments."""
        names = ("prompt_lengths", "answer_mask", "segment_ids", "position_ids")
        return {k: batch[k].to(self.device) for k in names if k in batch}

    def _answer_targets(self, ids, args: dict) -> torch.Tensor | None:
        if "answer_mask" in args:
            return args["answer_mask"][:, 1:].float()
        if "prompt_lengths" in args:
            return answer_targets(ids, args["prompt_lengths"])
        return None

    def _scored_tokens(self, ids, args: dict) -> int:
        """Tokens an eval batch's NLL covers: next-token targets (ar) or positions (diffusion); for SFT rows
        only the answers (with their EOS padding)."""
        ar = self.cfg.train.objective == "ar"
        if "answer_mask" in args:
            return int(args["answer_mask"][:, 1:].sum() if ar else args["answer_mask"].sum())
        if "prompt_lengths" in args:  # answer positions p >= prompt length; for ar the targets 1..L-1 are the same
            return int((torch.arange(ids.shape[1], device=ids.device)[None] >= args["prompt_lengths"][:, None]).sum())
        return ids[:, 1:].numel() if ar else ids.numel()

    def compute_loss(self, batch: dict, generator=None) -> torch.Tensor:
        """This rank's loss on its rows of a global batch; the mean over ranks is the one-process loss."""
        ids = batch["input_ids"].to(self.device)
        args = self._batch_args(batch)
        normalizer = None
        targets = self._answer_targets(ids, args) if self.cfg.train.objective == "ar" else None
        if targets is not None:
            count = D.all_reduce_sum(targets.sum())
            normalizer = count.clamp(min=1.0) / self.env.world_size
        return self.wrapped(ids, generator=generator or self.noise_gen, ar_normalizer=normalizer, **args)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out perplexity: ELBO bound (diffusion) or exact (ar); fixed seed, so comparable across steps.
        SFT data: of the answers given their prompts. Every rank scores the whole held-out split (under FSDP2
        each forward is collective)."""
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
            tokens += self._scored_tokens(ids, args)
        self.module.train()
        loss = nll / max(tokens, 1)
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": tokens}

    # ---- checkpoints ------------------------------------------------------------------------
    def _checkpoint_key(self, name: str) -> bool:
        """Which state goes into a training checkpoint: not the tied head (it is the embedding) and, under
        LoRA, only the adapters (the frozen base comes from train.init_from)."""
        if self.model_config.tie_embeddings and name.endswith("lm_head.weight"):
            return False
        if self.cfg.lora.enabled:
            from .lora import is_adapter_key

            return is_adapter_key(name)
        return True

    def save(self) -> Path:
        state = {"data": self.batches.state_dict(), "tokens_seen": self.tokens_seen, "config": to_dict(self.cfg)}
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
            keep_key=self._checkpoint_key,
        )

    def resume(self, path: str | Path | None = None) -> bool:
        ckpt = Path(path) if path else latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            return False
        if not ckpt.is_dir():
            raise CheckpointError(f"{ckpt}: no such checkpoint")
        self._check_resume_config(ckpt)
        state = load_checkpoint(
            ckpt, self.wrapped, self.optimizer, self.scheduler, self.noise_gen, keep_key=self._checkpoint_key
        )
        self.batches.load_state_dict(state["data"])
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        if self.env.is_main:
            self._truncate_metrics(self.step)
        ranks = state.get("world_size", 1)
        self.log(f"resumed from {ckpt} at step {self.step}" + (f" (saved by {ranks} ranks)" if ranks != 1 else ""))
        return True

    def _truncate_metrics(self, step: int) -> None:
        """Drop records a killed run logged after its last checkpoint: they are about to be redone."""
        path = self.out / "metrics.jsonl"
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
        fatal = [
            c
            for c in changed
            if c.split(".")[0] in ("model", "data", "tokenizer", "diffusion", "lora") or c == "train.init_from"
        ]
        if fatal:
            raise CheckpointError(
                f"{ckpt}: cannot resume with changed settings {', '.join(fatal)}; "
                "use the run's original config (see run_config.json)"
            )
        if changed:
            self.log(f"resuming with changed settings: {', '.join(changed)}")

    def export(self, out_dir: str | Path | None = None) -> Path:
        """A plain dlm folder (safetensors) from the trained weights, whatever the wrapping: the full state is
        gathered to rank 0 (collective: every rank calls this), loaded into a fresh network on CPU and saved.
        Under LoRA the adapters are saved to OUT/adapter and merged into the base for the folder."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        out_dir = Path(out_dir) if out_dir else self.out / "final"
        full = get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.env.is_main:
            state = {k.removeprefix("net."): v for k, v in full.items()}
            if self.cfg.lora.enabled:
                from .lora import is_adapter_key, merge_adapters

                adapters = {k: v for k, v in state.items() if is_adapter_key(k)}
                base = self._base_network(torch.device("cpu"))
                model = merge_adapters(base, self.cfg.lora, adapters, out_dir.parent / f"{out_dir.name}-adapter")
            else:
                with torch.device("meta"):  # the gathered tensors become the weights: no second copy
                    model = Transformer(self.model_config)
                missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
                missing = [k for k in missing if not (k == "lm_head.weight" and self.model_config.tie_embeddings)]
                if missing or unexpected:
                    raise CheckpointError(f"export: state does not fit the network ({missing[:3]}, {unexpected[:3]})")
            gen = self.cfg.generation
            save_pretrained(
                model,
                out_dir,
                tokenizer=self.tokenizer,
                generation_config=gen,
                diffusion_config=self.cfg.diffusion if self.cfg.train.objective == "diffusion" else None,
            )
        D.barrier()
        return out_dir

    # ---- the loop ---------------------------------------------------------------------------
    def _metrics_writer(self):
        if not self.env.is_main:
            return None, None
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
        if f is not None:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        if tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    tb.add_scalar(k, v, rec["step"])

    def _sync_context(self, last_micro_step: bool):
        """DDP: no gradient all-reduce on the accumulation micro-steps before the last."""
        if not last_micro_step and hasattr(self.wrapped, "no_sync"):
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    def train(self, max_steps: int | None = None) -> list[dict]:
        """Run until train.max_steps (or `max_steps`, to stop early as if interrupted)."""
        tc = self.cfg.train
        stop_at = min(max_steps, tc.max_steps) if max_steps is not None else tc.max_steps
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "run_config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
        f, tb = self._metrics_writer()
        bar = None
        if tc.progress and self.env.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        self.module.train()
        t_last, tok_last = time.perf_counter(), self.tokens_seen
        world = self.env.world_size
        try:
            while self.step < stop_at:
                loss_sum = torch.zeros((), dtype=torch.float64)
                crc = 0
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
                loss_val = float(loss_sum)
                grad_norm = None
                if self.cfg.optim.grad_clip > 0:
                    params = [p for p in self.module.parameters() if p.requires_grad]
                    grad_norm = D.full_norm(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                lr = self.scheduler.get_last_lr()[0]
                rec = {"step": self.step, "loss": loss_val, "lr": lr, "tokens": self.tokens_seen, "data_crc": crc}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                if self.step % tc.log_every == 0 or self.step == stop_at:
                    now = time.perf_counter()
                    rec["tok_s"] = (self.tokens_seen - tok_last) / max(now - t_last, 1e-9)
                    for k, v in D.peak_memory_gb(self.device).items():  # the largest over ranks
                        rec[k] = round(D.all_reduce_max(v), 3)
                    t_last, tok_last = now, self.tokens_seen
                if (tc.eval_every and self.step % tc.eval_every == 0) or self.step == tc.max_steps:
                    rec.update(self.evaluate())
                self._record(rec, f, tb)
                if bar is not None:
                    post = {"loss": f"{loss_val:.3f}", "lr": f"{lr:.2e}"}
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
            if f is not None:
                f.close()
            if tb is not None:
                tb.close()
        return self.history
