"""Constraint success, like with like (claim 5): both models write a JSON object for a schema after a held-out
function signature (`return {...}`), once free and once decoded under the same llguidance constraint, with the
same token budget; success = the output is JSON valid under the schema (and, constrained, complete within the
budget). Settings are fixed here, before any result: 4 schemas in turn, 40 tokens, one token per forward for
diffusion (steps = gen_length), greedy."""

from __future__ import annotations

import json
import time

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "size": {"type": "integer", "minimum": 0, "maximum": 999}}},
    {"type": "object", "properties": {"ok": {"type": "boolean"},
                                      "items": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                                           "maximum": 99}, "maxItems": 3}}},
    {"type": "object", "properties": {"mode": {"enum": ["r", "w", "a"]}, "path": {"type": "string", "maxLength": 16}}},
    {"type": "object", "properties": {"x": {"type": "integer", "minimum": -99, "maximum": 99},
                                      "y": {"type": "integer", "minimum": -99, "maximum": 99}}},
]  # fmt: skip
for _s in SCHEMAS:
    _s.update(required=sorted(_s["properties"]), additionalProperties=False)
GEN_LENGTH = 40


def control_items(signatures: list[str]) -> list[dict]:
    """One item per signature: the prompt ends in `return ` inside the body; schemas in turn."""
    return [{"prompt": sig.rstrip() + "\n    return ", "schema": SCHEMAS[i % len(SCHEMAS)]}
            for i, sig in enumerate(signatures)]  # fmt: skip


def _valid(text: str, schema: dict) -> bool:
    import jsonschema_rs

    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False
    return jsonschema_rs.validator_for(schema).is_valid(value)


def evaluate_control(lm, items: list[dict], *, constrained: bool) -> dict:
    """Per item: whether the output is valid under its schema (free: its first line, stripped), and the NFE."""
    rows, t0 = [], time.perf_counter()
    for it in items:
        so = {"json": it["schema"]} if constrained else None
        o = lm.generate(it["prompt"], structured_output=so, gen_length=GEN_LENGTH, steps=GEN_LENGTH,
                        temperature=0.0)[0]  # fmt: skip
        text = o.text if constrained else o.text.split("\n", 1)[0].strip()
        rows.append({"valid": _valid(text, it["schema"]), "nfe": o.nfe, "tokens": len(o.tokens), "text": text})
    n = len(rows)
    return {
        "n": n,
        "valid": [r["valid"] for r in rows],
        "success": sum(r["valid"] for r in rows) / max(1, n),
        "nfe_mean": sum(r["nfe"] for r in rows) / max(1, n),
        "tokens_mean": sum(r["tokens"] for r in rows) / max(1, n),
        "seconds": time.perf_counter() - t0,
        "examples": [r["text"] for r in rows[:3]],
    }
