"""Evaluation: likelihood and perplexity, code quality (later: task suites, speed, reports)."""

from .code import (
    InfillTask,
    completion_tasks,
    evaluate_completion,
    evaluate_infill,
    extract_functions,
    fit_to_model,
    function_body_parses,
    infill_tasks,
    signature,
)
from .ppl import PerplexityResult, pack_texts, perplexity

__all__ = [
    "InfillTask",
    "PerplexityResult",
    "completion_tasks",
    "evaluate_completion",
    "evaluate_infill",
    "extract_functions",
    "fit_to_model",
    "function_body_parses",
    "infill_tasks",
    "pack_texts",
    "perplexity",
    "signature",
]
