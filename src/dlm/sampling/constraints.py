"""Structured output (regex, JSON Schema, JSON object, Lark grammar) for any decoding order, through llguidance.

llguidance (the engine behind vLLM's and SGLang's `guidance` backends) compiles a constraint against the
tokenizer and, for a prefix of tokens, gives the set of tokens that may come next. That is a left-to-right
contract; a diffusion model commits tokens in any order. dlm keeps the contract sound with one rule per row:

- the *frontier* is the first generated position the grammar has not yet accepted. Its logits are masked to
  the tokens the grammar allows there, so whatever the noise process commits at the frontier is valid;
- after every step, the settled tokens from the frontier on (up to the first still-noisy position) are fed to
  the grammar; the first token it refuses, and every settled token after it, go back to noise (they were
  predicted together with the refused one);
- positions past the frontier are otherwise free: a confident token committed early is kept when the grammar
  later accepts it, so parallel commits still count.

Every step accepts at least the frontier's token once a block's last step commits everything, so a row needs
at most gen_length extra steps; when the constraint can be met within gen_length, the output meets it. The AR
sampler uses the same `Guide` at its one position per step. Choice of engine: llguidance over xgrammar and
outlines-core because it builds a tokenizer from the `tokenizers` JSON dlm already has (no transformers object),
takes regex, JSON Schema and Lark in one API, and computes a mask in microseconds without a precompiled index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import InputError

KINDS = ("regex", "json_schema", "json_object", "grammar")


@dataclass(frozen=True)
class StructuredOutput:
    """What the output must match: exactly one of `regex`, `json` (a JSON Schema, as a dict or JSON text),
    `json_object=True` (any JSON object) or `grammar` (Lark, as llguidance reads it). Like vLLM's
    StructuredOutputsParams. `field` names the input in error messages."""

    regex: str | None = None
    json: dict | str | None = None
    json_object: bool = False
    grammar: str | None = None
    field: str = "structured_output"

    def __post_init__(self) -> None:
        given = [k for k, v in (("regex", self.regex), ("json", self.json), ("json_object", self.json_object or None),
                                ("grammar", self.grammar)) if v is not None]  # fmt: skip
        if len(given) != 1:
            raise InputError(
                self.field, f"give exactly one of regex, json, json_object, grammar (got {given or 'none'})"
            )
        for name in ("regex", "grammar"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise InputError(f"{self.field}.{name}", "must be a non-empty string")

    def llguidance_grammar(self) -> str:
        from llguidance import LLMatcher

        if self.regex is not None:
            return LLMatcher.grammar_from_regex(self.regex)
        if self.grammar is not None:
            return LLMatcher.grammar_from_lark(self.grammar)
        schema: Any = {"type": "object"} if self.json_object else self.json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise InputError(f"{self.field}.json", f"is not valid JSON ({e})") from None
        if not isinstance(schema, dict):
            raise InputError(f"{self.field}.json", f"must be a JSON Schema object, got {type(schema).__name__}")
        # compact JSON (no free whitespace between tokens): a small model given free whitespace can spend its
        # whole budget on it; a schema may still opt back in with "x-guidance"
        schema = {"x-guidance": {"whitespace_flexible": False}, **schema}
        return LLMatcher.grammar_from_json_schema(json.dumps(schema))


class GrammarCompiler:
    """Compiles StructuredOutputs against one tokenizer (building llguidance's tokenizer takes ~1 s: keep one per
    model). `vocab_size`: the model's logits width (may exceed the tokenizer's)."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_id: int | None):
        try:
            import llguidance
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise InputError("structured_output", f"needs llguidance (pip install llguidance): {e}") from None
        backend = getattr(tokenizer, "backend", None)
        if backend is None:
            raise InputError(
                "structured_output", f"{type(tokenizer).__name__} has no `tokenizers` backend to compile against"
            )
        if eos_token_id is None:
            raise InputError("structured_output", "the model has no EOS token to end a constrained output with")
        self.vocab_size = int(vocab_size)
        self.ll_tokenizer = llguidance.LLTokenizer(
            backend.to_str(), n_vocab=self.vocab_size, eos_token=int(eos_token_id)
        )

    def compile(self, spec: StructuredOutput) -> "Constraint":
        from llguidance import LLMatcher

        try:
            grammar = spec.llguidance_grammar()
        except InputError:
            raise
        except (ValueError, TypeError) as e:
            raise InputError(spec.field, f"does not compile ({e})") from None
        error = LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if error:
            raise InputError(spec.field, f"does not compile: {error.strip()}")
        return Constraint(grammar, self.ll_tokenizer, self.vocab_size)


@dataclass(frozen=True)
class Constraint:
    """A compiled constraint; `guide()` starts one row's matcher."""

    grammar: str
    ll_tokenizer: Any
    vocab_size: int

    def guide(self) -> "Guide":
        from llguidance import LLMatcher

        return Guide(LLMatcher(self.ll_tokenizer, self.grammar), self.vocab_size)


class Guide:
    """One row's position in its grammar: `consumed` generated tokens accepted so far."""

    def __init__(self, matcher, vocab_size: int):
        from llguidance.torch import allocate_token_bitmask

        self.matcher, self.vocab_size, self.consumed = matcher, vocab_size, 0
        self.closed = False  # the sampler has checked the row to its end (set by the sampler)
        self._bitmask = allocate_token_bitmask(1, vocab_size)

    @property
    def stopped(self) -> bool:
        """The grammar has ended (EOS accepted, or nothing but EOS can follow)."""
        return bool(self.matcher.is_stopped())

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens the grammar allows next."""
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        bits = self._bitmask[0].view(torch.int32)
        shifts = torch.arange(32, dtype=torch.int32)
        return ((bits[:, None] >> shifts) & 1).bool().flatten()[: self.vocab_size]

    def mask_(self, logits: torch.Tensor) -> None:
        """Set every logit the grammar does not allow next to -inf, in place ((V,) float)."""
        allowed = self.allowed().to(logits.device)
        if bool(allowed.any()):
            logits.masked_fill_(~allowed, float("-inf"))

    def accept(self, tokens: Sequence[int]) -> int:
        """Feed settled tokens in order; returns how many the grammar accepted (stops at the first refused)."""
        if not tokens or self.stopped:
            return 0
        n = int(self.matcher.try_consume_tokens([int(t) for t in tokens]))
        self.consumed += n
        return n

    def satisfied(self) -> bool:
        return bool(self.matcher.is_accepting()) or self.stopped


def check_guides(constraints, n: int, locks: Sequence[dict]) -> list[Constraint | None]:
    """Validate the per-row `constraints` argument of the samplers (None, or one Constraint-or-None per row)."""
    if constraints is None:
        return [None] * n
    constraints = list(constraints)
    if len(constraints) != n:
        raise InputError("constraints", f"got {len(constraints)} constraints for {n} prompts")
    for i, c in enumerate(constraints):
        if c is not None and not isinstance(c, Constraint):
            raise InputError(f"constraints[{i}]", "must be a Constraint (GrammarCompiler.compile) or None")
        if c is not None and locks[i]:
            raise InputError(f"constraints[{i}]", "a row takes a template or a constraint, not both")
    return constraints


class RowGuides:
    """The sampler loop's constrained rows, by handle: it masks each row's frontier, feeds the grammar what
    settled, sends refused tokens back to noise (the rule in this module's docstring)."""

    def __init__(self):
        self.by_handle: dict[int, Guide] = {}

    def __bool__(self) -> bool:
        return bool(self.by_handle)

    def __contains__(self, handle: int) -> bool:
        return handle in self.by_handle

    def add(self, handles: Sequence[int], constraints: Sequence[Constraint | None]) -> None:
        self.by_handle.update((h, c.guide()) for h, c in zip(handles, constraints) if c is not None)

    def pop(self, handle: int) -> None:
        self.by_handle.pop(handle, None)

    def open(self, rows):
        """(row index, handle, guide) of the live rows whose grammar still has positions to check."""
        for j, h in enumerate(rows.handle.tolist()):
            g = self.by_handle.get(h)
            if g is not None and not g.closed:
                yield j, h, g

    def guided(self, rows) -> torch.Tensor:
        """(R,) bool: rows under a constraint."""
        return torch.tensor([h in self.by_handle for h in rows.handle.tolist()], device=rows.handle.device)

    def mask_frontiers(self, rows, logits: torch.Tensor, query_slots: torch.Tensor) -> None:
        """A constrained row's frontier (its first generated position the grammar has not accepted) may only
        take a token the grammar allows next."""
        for j, _, g in self.open(rows):
            col = torch.nonzero(query_slots[j] == rows.gen_start[j] + g.consumed).flatten()
            if col.numel():
                g.mask_(logits[j, int(col[-1])])

    def settle(self, rows, gen_length: int, eos_id: int, noise) -> None:
        """Feed each constrained row's newly settled tokens (from its frontier up to the first noisy position) to
        its grammar; the first refused token and every settled token after it go back to noise (`noise(n,
        handle)`: n fresh noise tokens). A grammar that has ended (nothing but EOS may follow) ends the row: the
        rest of its region becomes EOS."""
        r, G = rows, gen_length
        for j, h, g in list(self.open(rows)):
            start = int(r.gen_start[j])
            noisy = r.noisy[j, start + g.consumed : start + G].tolist()
            settled = noisy.index(True) if True in noisy else len(noisy)
            g.accept(r.tokens[j, start + g.consumed : start + g.consumed + settled].tolist())
            rest = torch.arange(start + g.consumed, start + G, device=r.tokens.device)
            if g.stopped:
                r.tokens[j, rest] = eos_id
                r.noisy[j, rest] = False
                g.closed = True
            elif g.consumed >= G:
                g.closed = True
            elif not bool(r.noisy[j, start + g.consumed]):  # refused: it and what was settled after it go back
                back = rest[~r.noisy[j, rest]]
                r.tokens[j, back] = torch.tensor(noise(int(back.numel()), h), device=r.tokens.device,
                                                 dtype=r.tokens.dtype)  # fmt: skip
                r.noisy[j, back] = True

    def hide_unaccepted(self, rows, regions: dict[int, list[int]], gen_length: int, free_id: int) -> None:
        """In each constrained row's region (by handle), what lies past its frontier shows as noise."""
        for _, h, g in self.open(rows):
            regions[h][g.consumed :] = [free_id] * (gen_length - g.consumed)
