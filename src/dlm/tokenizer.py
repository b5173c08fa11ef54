"""Byte-level BPE tokenizer (HF `tokenizers`) with dlm's special tokens and chat template.

The saved folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json) also loads with
`transformers.AutoTokenizer.from_pretrained(folder)` and gives the same ids; transformers itself is
not imported here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import CheckpointError, ConfigError, InputError

SPECIAL_TOKENS: dict[str, str] = {
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "pad": "<|pad|>",
    "mask": "<|mask|>",
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
}
ROLES = ("system", "user", "assistant")
TEMPLATE_FREE = SPECIAL_TOKENS["mask"]  # in an answer template: one token the model writes
NUM_BYTES = 256
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + NUM_BYTES

# One line per message: "<|role|>\n{content}<|eos|>\n"; generation prompt "<|assistant|>\n".
# Written with explicit string expressions so whitespace does not depend on trim_blocks/lstrip_blocks.
CHAT_TEMPLATE: str = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|eos|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def train_tokenizer(
    files: list[str | Path],
    vocab_size: int,
    out_dir: str | Path | None = None,
    min_frequency: int = 2,
    *,
    texts: Iterable[str] | None = None,
) -> "DLMTokenizer":
    """Train a byte-level BPE on plain-text files, or on `texts` (documents already read, e.g. the
    "text" fields of JSONL: pass files=[] then); special tokens get ids 0..6 in SPECIAL_TOKENS order."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            "vocab_size",
            f"got {vocab_size!r}; must be an integer >= {MIN_VOCAB_SIZE} "
            f"({len(SPECIAL_TOKENS)} special tokens + {NUM_BYTES} byte tokens)",
        )
    if texts is not None:
        return _train(None, texts, vocab_size, out_dir, min_frequency)
    if isinstance(files, (str, Path)):
        files = [files]
    paths = [Path(f) for f in files]
    if not paths:
        raise InputError("files", "no training files given; pass at least one non-empty text file")
    for p in paths:
        if not p.is_file():
            raise InputError("files", f"{p} does not exist or is not a file")
    paths = [p for p in paths if p.stat().st_size > 0]  # empty files (e.g. __init__.py) add nothing
    if not paths:
        raise InputError("files", "every training file is empty; pass at least one non-empty text file")
    return _train(paths, None, vocab_size, out_dir, min_frequency)


def _train(paths, texts, vocab_size, out_dir, min_frequency) -> "DLMTokenizer":
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if texts is not None:
        seen = {"n": 0}

        def counted():
            for t in texts:
                if not isinstance(t, str):
                    raise InputError("texts", f"expected str documents, got {type(t).__name__}")
                seen["n"] += len(t)
                yield t

        tok.train_from_iterator(counted(), trainer)
        if seen["n"] == 0:
            raise InputError("texts", "no text to train on; every document is empty")
    else:
        tok.train([str(p) for p in paths], trainer)
    out = DLMTokenizer(tok)
    if out_dir is not None:
        out.save(out_dir)
    return out


class TokenEncoding:
    """encode / encode_batch over a class's `_backend_for(parse_special)` (a `tokenizers.Tokenizer`); shared by
    DLMTokenizer and the foreign-folder HFTokenizer."""

    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; no BOS/EOS is added. With parse_special (prompts), "<|mask|>" in the text
        becomes the mask token (filled in place by the sampler); without it (training data, scored
        text) special-token strings are ordinary text."""
        if not isinstance(text, str):
            raise InputError("text", f"expected a str, got {type(text).__name__}")
        return self._backend_for(parse_special).encode(text, add_special_tokens=False).ids

    def encode_template(self, template: str, field: str = "template") -> list[int]:
        """Token ids of an answer template: every "<|mask|>" (dlm's spelling, whatever the tokenizer) is one
        token the model writes (the mask token); the text between is locked: encoded as training text and
        never noised, changed or scored. E.g. a Sudoku answer with its givens in place and its blanks free."""
        if not isinstance(template, str):
            raise InputError(field, f"expected a str, got {type(template).__name__}")
        mask = self.mask_token_id
        if mask is None:
            raise InputError(field, "this model's tokenizer has no mask token, so a template cannot mark free tokens")
        out: list[int] = []
        for k, piece in enumerate(template.split(TEMPLATE_FREE)):
            if k:
                out.append(mask)
            if piece:
                out.extend(self.encode(piece, parse_special=False))
        return out

    def encode_batch(self, texts: list[str], parse_special: bool = True) -> list[list[int]]:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}]", f"expected a str, got {type(t).__name__}")
        return [e.ids for e in self._backend_for(parse_special).encode_batch(list(texts), add_special_tokens=False)]


class DLMTokenizer(TokenEncoding):
    """Thin wrapper over a `tokenizers.Tokenizer` with dlm's special tokens and chat template."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        chat_template: str = CHAT_TEMPLATE,
        model_max_length: int = 1_000_000,
    ):
        self._tok = tokenizer
        self.chat_template = chat_template
        self.model_max_length = int(model_max_length)
        missing = [t for t in SPECIAL_TOKENS.values() if tokenizer.token_to_id(t) is None]
        if missing:
            raise InputError(
                "tokenizer",
                f"vocabulary lacks the special tokens {missing}; all of {list(SPECIAL_TOKENS.values())} are required",
            )
        self._special_ids = {name: tokenizer.token_to_id(t) for name, t in SPECIAL_TOKENS.items()}
        self._template = None

    # ---- loading / saving -------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> "DLMTokenizer":
        """Load from a folder written by `save` (or any folder with a compatible tokenizer.json)."""
        path = Path(path)
        tok_file = path / TOKENIZER_FILE
        if not tok_file.is_file():
            raise CheckpointError(f"{tok_file}: missing; a tokenizer folder must contain {TOKENIZER_FILE}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise CheckpointError(f"{tok_file}: corrupt or unreadable tokenizer file ({e})") from None
        chat_template, max_len = CHAT_TEMPLATE, 1_000_000
        cfg_file = path / CONFIG_FILE
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
                if not isinstance(cfg, dict):
                    raise ValueError("expected a JSON object")
            except ValueError as e:
                raise CheckpointError(f"{cfg_file}: corrupt JSON ({e})") from None
            chat_template = cfg.get("chat_template") or chat_template
            max_len = int(cfg.get("model_max_length") or max_len)
        jinja_file = path / "chat_template.jinja"
        if jinja_file.is_file():
            chat_template = jinja_file.read_text(encoding="utf-8")
        try:
            return cls(tok, chat_template=chat_template, model_max_length=max_len)
        except InputError as e:
            raise CheckpointError(f"{tok_file}: {e}") from None

    def save(self, out_dir: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(out / TOKENIZER_FILE, self._tok.to_str(pretty=True))
        special_map = {
            "bos_token": SPECIAL_TOKENS["bos"],
            "eos_token": SPECIAL_TOKENS["eos"],
            "pad_token": SPECIAL_TOKENS["pad"],
            "mask_token": SPECIAL_TOKENS["mask"],
            "additional_special_tokens": [SPECIAL_TOKENS[r] for r in ROLES],
        }
        added = {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t, i in ((t, self._tok.token_to_id(t)) for t in SPECIAL_TOKENS.values())
        }
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_map,
            "unk_token": None,
            "added_tokens_decoder": added,
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length,
            "padding_side": "right",
            "chat_template": self.chat_template,
        }
        _atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        _atomic_write_text(out / SPECIAL_MAP_FILE, json.dumps(special_map, indent=2) + "\n")

    # ---- vocabulary ---------------------------------------------------------------------------
    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_token_id(self) -> int:
        return self._special_ids["bos"]

    @property
    def eos_token_id(self) -> int:
        return self._special_ids["eos"]

    @property
    def pad_token_id(self) -> int:
        return self._special_ids["pad"]

    @property
    def mask_token_id(self) -> int:
        return self._special_ids["mask"]

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special_ids)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    # ---- encode / decode ----------------------------------------------------------------------
    def _backend_for(self, parse_special: bool):
        if parse_special:
            return self._tok
        if getattr(self, "_plain", None) is None:  # a copy that reads "<|mask|>" etc. as plain text
            self._plain = tokenizers.Tokenizer.from_str(self._tok.to_str())
            self._plain.encode_special_tokens = True
        return self._plain

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a prompt that starts a sequence. dlm models take no BOS, so this is `encode(text)`; foreign
        tokenizers (dlm.hub.hf_tokenizer.HFTokenizer) add what their model expects there."""
        return self.encode(text)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        n = self.vocab_size
        for j, i in enumerate(ids):
            if not 0 <= i < n:
                raise InputError(f"ids[{j}]", f"token id {i} is outside the vocabulary [0, {n})")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- chat ------------------------------------------------------------------------------------
    @staticmethod
    def _check_messages(messages) -> None:
        if not isinstance(messages, (list, tuple)):
            got = type(messages).__name__
            raise InputError("messages", f"expected a list of {{'role', 'content'}} dicts, got {got}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise InputError(f"messages[{i}]", f"expected a dict with 'role' and 'content', got {type(m).__name__}")
            if m.get("role") not in ROLES:
                raise InputError(f"messages[{i}].role", f"got {m.get('role')!r}; allowed: {', '.join(ROLES)}")
            if not isinstance(m.get("content"), str):
                raise InputError(f"messages[{i}].content", f"expected a str, got {type(m.get('content')).__name__}")

    def _compiled_template(self):
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            # Same settings as transformers' chat-template renderer.
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._template = env.from_string(self.chat_template)
        return self._template

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = False,
        tokenize: bool = True,
    ) -> list[int] | str:
        """Render messages with the chat template; return ids (tokenize=True) or the text."""
        self._check_messages(messages)
        text = self._compiled_template().render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=SPECIAL_TOKENS["bos"],
            eos_token=SPECIAL_TOKENS["eos"],
            pad_token=SPECIAL_TOKENS["pad"],
            mask_token=SPECIAL_TOKENS["mask"],
        )
        return self.encode(text) if tokenize else text

    def sft_example(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(prompt_ids, answer_ids): prompt = all but the last message + generation prompt;
        answer = last (assistant) message content + EOS."""
        self._check_messages(messages)
        if not messages:
            raise InputError("messages", "is empty; an SFT example needs at least one assistant message")
        last = len(messages) - 1
        if messages[last]["role"] != "assistant":
            raise InputError(
                f"messages[{last}].role",
                f"got {messages[last]['role']!r}; the last message of an SFT example must be 'assistant'",
            )
        prompt = self.apply_chat_template(messages[:last], add_generation_prompt=True, tokenize=True)
        answer = self.encode(messages[last]["content"], parse_special=False) + [self.eos_token_id]
        return prompt, answer

    def __repr__(self) -> str:
        return f"DLMTokenizer(vocab_size={self.vocab_size})"
