"""Evaluation: likelihood and perplexity (later: task suites, speed, reports)."""

from .ppl import PerplexityResult, pack_texts, perplexity

__all__ = ["PerplexityResult", "pack_texts", "perplexity"]
