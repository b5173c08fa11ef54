"""The tokenizer of a foreign checkpoint folder (LLaDA, Dream, LLaMA, Qwen2, SmolLM2, ...), read without
transformers and without remote code: `tokenizer.json` through `tokenizers` (or, for Qwen2/Dream/GPT-2-style
folders that ship only `vocab.json` + `merges.txt`, the same byte-level BPE rebuilt from those files), special
tokens and the chat template from `tokenizer_config.json` (or `chat_template.jinja`), special ids from the
model config. Same interface as DLMTokenizer, so the pipeline, the CLI and the server use either.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from ..errors import CheckpointError, InputError
from ..model import ModelConfig
from ..tokenizer import TokenEncoding

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
SPECIAL_NAMES = ("bos", "eos", "pad", "unk", "mask")
# Qwen2's pre-tokenizer split (also Dream's: its tokenizer is Qwen2's under another class name).
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_CLASSES = {"Qwen2Tokenizer", "Qwen2TokenizerFast", "DreamTokenizer"}
GPT2_CLASSES = {"GPT2Tokenizer", "GPT2TokenizerFast"}
BERT_CLASSES = {"BertTokenizer", "BertTokenizerFast"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from None


def _token_str(v) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _bpe_from_vocab_merges(folder: Path, config: dict) -> tokenizers.Tokenizer:
    """Byte-level BPE from vocab.json + merges.txt, as transformers converts Qwen2/GPT-2 tokenizers."""
    cls = config.get("tokenizer_class")
    if cls not in QWEN2_CLASSES | GPT2_CLASSES:
        raise CheckpointError(
            f"{folder}: no {TOKENIZER_FILE}; rebuilding from vocab.json + merges.txt is implemented for "
            f"{', '.join(sorted(QWEN2_CLASSES | GPT2_CLASSES))}, not tokenizer_class {cls!r}"
        )
    vocab = _read_json(folder / "vocab.json")
    merges = []
    for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        a, _, b = line.partition(" ")
        merges.append((a, b))
    tok = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="")
    )
    prefix = bool(config.get("add_prefix_space", False))
    if cls in QWEN2_CLASSES:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    tok.decoder = decoders.ByteLevel()
    added = _added_tokens(folder, config)
    for i, (content, spec) in sorted(added.items()):
        token = AddedToken(
            content,
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", False),
            special=spec.get("special", True),
        )
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
        if tok.token_to_id(content) != i:
            raise CheckpointError(
                f"{folder}: added token {content!r} should have id {i}, got {tok.token_to_id(content)}"
            )
    return tok


def _added_tokens(folder: Path, config: dict) -> dict[int, tuple[str, dict]]:
    out: dict[int, tuple[str, dict]] = {}
    for i, spec in (config.get("added_tokens_decoder") or {}).items():
        out[int(i)] = (spec["content"], spec)
    if not out and (folder / "added_tokens.json").is_file():
        for content, i in _read_json(folder / "added_tokens.json").items():
            out[int(i)] = (content, {"special": True})
    return {i: (c, s) for i, (c, s) in out.items()}


class HFTokenizer(TokenEncoding):
    """`tokenizers.Tokenizer` + the folder's special tokens and chat template (jinja2, rendered in a sandbox
    with the same settings and helpers as transformers)."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        chat_template: str | None = None,
        special_tokens: dict[str, str | None] | None = None,
        special_ids: dict[str, int | None] | None = None,
        model_max_length: int = 1_000_000,
        config: dict | None = None,
    ):
        self._tok = tokenizer
        self.chat_template = chat_template
        self.model_max_length = int(model_max_length)
        self._config = dict(config or {})
        tokens = dict(special_tokens or {})
        ids: dict[str, int | None] = {}
        for name in SPECIAL_NAMES:  # the model config's id wins; else the id of the named token
            given = (special_ids or {}).get(name)
            if given is None and tokens.get(name) is not None:
                given = tokenizer.token_to_id(tokens[name])
            ids[name] = given
            if given is not None and tokens.get(name) is None:
                tokens[name] = tokenizer.id_to_token(given)
        self._special_ids, self._special_tokens = ids, tokens
        self._template = None
        self._plain = None

    # ---- loading / saving ----------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path, model_config: ModelConfig | None = None) -> "HFTokenizer":
        folder = Path(path)
        cfg_file = folder / CONFIG_FILE
        config = _read_json(cfg_file) if cfg_file.is_file() else {}
        if not isinstance(config, dict):
            raise CheckpointError(f"{cfg_file}: corrupt JSON (expected an object)")
        tok_file = folder / TOKENIZER_FILE
        if tok_file.is_file():
            try:
                tok = tokenizers.Tokenizer.from_file(str(tok_file))
            except Exception as e:  # tokenizers raises plain Exception on bad JSON
                raise CheckpointError(f"{tok_file}: corrupt or unreadable tokenizer file ({e})") from None
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tok = _bpe_from_vocab_merges(folder, config)
        else:
            raise CheckpointError(
                f"{tok_file}: missing; a tokenizer folder needs {TOKENIZER_FILE} (or vocab.json + merges.txt)"
            )
        tok.no_padding()  # dlm pads and cuts rows itself (a sentence-embedding folder pads/truncates to 128)
        tok.no_truncation()
        if config.get("tokenizer_class") in BERT_CLASSES:
            # [CLS] ... [SEP] frames a classifier's input; a diffusion LM trained on plain text with [SEP] as its EOS
            # takes a prompt as it is (a [SEP] after it would end the document)
            tok.post_processor = None
        special_map = folder / SPECIAL_MAP_FILE
        smap = _read_json(special_map) if special_map.is_file() else {}
        tokens = {n: _token_str(config.get(f"{n}_token")) or _token_str(smap.get(f"{n}_token")) for n in SPECIAL_NAMES}
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        max_len = config.get("model_max_length")
        max_len = int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12 else 1_000_000
        return cls(
            tok,
            chat_template=template,
            special_tokens=tokens,
            special_ids=_ids_of(model_config),
            model_max_length=max_len,
            config=config,
        )

    @classmethod
    def from_gguf(cls, gguf: Path, model_config: ModelConfig | None = None) -> "HFTokenizer":
        """The tokenizer stored in a GGUF file, as transformers' GGUF reader rebuilds it (a `tokenizers` backend)."""
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise CheckpointError(f"{gguf}: reading a GGUF tokenizer needs transformers and gguf") from None
        try:
            hf = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except (ValueError, OSError, KeyError) as e:
            raise CheckpointError(f"{gguf}: unreadable GGUF tokenizer ({e})") from None
        backend = getattr(hf, "backend_tokenizer", None)
        if not isinstance(backend, tokenizers.Tokenizer):
            raise CheckpointError(f"{gguf}: transformers gave no `tokenizers` backend for this GGUF")
        tokens = {n: getattr(hf, f"{n}_token", None) for n in SPECIAL_NAMES}
        tokens = {n: t if isinstance(t, str) else None for n, t in tokens.items()}
        max_len = getattr(hf, "model_max_length", None)
        max_len = int(max_len) if isinstance(max_len, int) and max_len < 1e12 else 1_000_000
        return cls(
            backend,
            chat_template=hf.chat_template,
            special_tokens=tokens,
            special_ids=_ids_of(model_config),
            model_max_length=max_len,
        )

    def save(self, out_dir: str | Path) -> None:
        """tokenizer.json + tokenizer_config.json (+ special_tokens_map.json), loadable by transformers'
        PreTrainedTokenizerFast without remote code."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        smap = {f"{n}_token": t for n, t in self._special_tokens.items() if t is not None}
        config = {k: v for k, v in self._config.items() if k not in ("auto_map", "vocab_file", "merges_file")}
        config.update(smap, tokenizer_class="PreTrainedTokenizerFast", model_max_length=self.model_max_length)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        for name, text in (
            (TOKENIZER_FILE, self._tok.to_str(pretty=True)),
            (CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n"),
            (SPECIAL_MAP_FILE, json.dumps(smap, indent=2, ensure_ascii=False) + "\n"),
        ):
            tmp = out / f".{name}.tmp.{os.getpid()}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out / name)

    # ---- vocabulary ---------------------------------------------------------------------------
    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    bos_token_id = property(lambda self: self._special_ids["bos"])
    eos_token_id = property(lambda self: self._special_ids["eos"])
    pad_token_id = property(lambda self: self._special_ids["pad"])
    mask_token_id = property(lambda self: self._special_ids["mask"])

    @property
    def special_ids(self) -> dict[str, int]:
        return {n: i for n, i in self._special_ids.items() if i is not None}

    def set_special_token(self, name: str, token_id: int) -> None:
        """Give a token of the vocabulary a special role (`mask` for a checkpoint whose vocabulary has none);
        `save` then names it in the tokenizer files."""
        if name not in SPECIAL_NAMES:
            raise InputError("name", f"got {name!r}; allowed: {', '.join(SPECIAL_NAMES)}")
        token = self._tok.id_to_token(int(token_id))
        if token is None:
            raise InputError("token_id", f"{token_id} is not in the vocabulary ({self.vocab_size} tokens)")
        self._special_ids[name], self._special_tokens[name] = int(token_id), token

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    # ---- encode / decode -------------------------------------------------------------------------
    def _backend_for(self, parse_special: bool) -> tokenizers.Tokenizer:
        if parse_special:
            return self._tok
        if self._plain is None:  # a copy that reads special-token strings as plain text
            self._plain = tokenizers.Tokenizer.from_str(self._tok.to_str())
            self._plain.encode_special_tokens = True
        return self._plain

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a prompt that starts a sequence: the folder's post-processor adds what the model expects
        there (e.g. LLaMA's BOS), as `tokenizer(text)` does in transformers."""
        if not isinstance(text, str):
            raise InputError("text", f"expected a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ---- chat ------------------------------------------------------------------------------------
    def _compiled_template(self):
        if self.chat_template is None:
            raise InputError("chat", "this tokenizer folder has no chat template (tokenizer_config.json chat_template)")
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise InputError("messages", f"the chat template refused them: {message}")

            def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
                return json.dumps(
                    x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
                )

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            try:
                self._template = env.from_string(self.chat_template)
            except TemplateError as e:
                raise CheckpointError(f"chat template does not parse ({e})") from None
        return self._template

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = False, tokenize: bool = True
    ) -> list[int] | str:
        """Render messages with the folder's chat template (as transformers does); ids or text."""
        if not isinstance(messages, (list, tuple)):
            raise InputError(
                "messages", f"expected a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
            )
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InputError(f"messages[{i}]", "expected a dict with str 'role' and 'content'")
        tokens = {f"{n}_token": t for n, t in self._special_tokens.items()}
        text = self._compiled_template().render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **tokens
        )
        return self.encode(text) if tokenize else text

    def sft_example(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(prompt_ids, answer_ids): all but the last message + generation prompt; last content + EOS."""
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
            raise InputError("messages", "an SFT example ends with an 'assistant' message")
        if self.eos_token_id is None:
            raise InputError("tokenizer", "no EOS token id; cannot end an SFT answer")
        prompt = self.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
        return prompt, self.encode(messages[-1]["content"], parse_special=False) + [self.eos_token_id]

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, special_ids={self.special_ids})"


def _ids_of(config: ModelConfig | None) -> dict[str, int | None]:
    if config is None:
        return {}
    return {
        "bos": config.bos_token_id,
        "eos": config.eos_token_id,
        "pad": config.pad_token_id,
        "mask": config.mask_token_id,
    }


def has_tokenizer(folder: Path, gguf: Path | None = None) -> bool:
    return gguf is not None or (folder / TOKENIZER_FILE).is_file() or (folder / "vocab.json").is_file()


def load_tokenizer(folder: Path, model_config: ModelConfig | None = None, gguf: Path | None = None):
    """DLMTokenizer when the folder's vocabulary has dlm's special tokens, else HFTokenizer."""
    from ..tokenizer import SPECIAL_TOKENS, DLMTokenizer

    if gguf is not None:
        return HFTokenizer.from_gguf(gguf, model_config)
    tok_file = folder / TOKENIZER_FILE
    if tok_file.is_file():
        try:
            vocab = tokenizers.Tokenizer.from_file(str(tok_file)).get_vocab(with_added_tokens=True)
        except Exception as e:
            raise CheckpointError(f"{tok_file}: corrupt or unreadable tokenizer file ({e})") from None
        if all(t in vocab for t in SPECIAL_TOKENS.values()):
            return DLMTokenizer.from_dir(folder)
    return HFTokenizer.from_dir(folder, model_config)
