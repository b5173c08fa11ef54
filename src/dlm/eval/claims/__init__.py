"""`dlm eval claims`: measure the claims of ../shared/CLAIMS.md on dlm's diffusion models against their AR
twins, and write `reports/claims.md` with PNG plots and a verdict per claim.

Two steps: `measure()` (measuring.py) runs every measurement that its inputs allow and writes
`measurements.json`; `write_report()` (report.py) turns that file into the report (so a report can be rebuilt
without re-measuring), with the verdicts of rules.py and the plots of plots.py. What is measured:

| claim | measurement | needs |
|---|---|---|
| 1 speed | `dlm bench` (reference, +cache, +parallel, +both, AR twin) | built-in models |
| 2 hallucination | facts task: hallucination rate of the diffusion model and its twin | runs/tasks/facts-* |
| 3 diversity | distinct-n, self-BLEU at several temperatures, read at matched generative perplexity | SmolLM2 |
| 4 energy | CPU-seconds and joules per generated token (same samples as 3) | |
| 5 control | JSON for a schema, free and under the same constraint engine, both twins | built-in models |
| 6 reasoning | Sudoku, Countdown, arithmetic accuracy (and against NFE for diffusion) | runs/tasks/* |
| 7 code | infilling exact match | built-in models |
| 8 edge | peak memory added, file size, speed, quality: int8 / fp32 / ONNX rows and GPT-2 small (dlm.bench.edge) | |
| 9 multimodal | captions, VQA and drawings of held-out scenes, both twins (multimodal.py) | runs/multimodal/* |

Verdicts follow fixed rules (`verdicts()`), stated in the report: one diffusion setting per claim, fixed before
any result (the others are shown beside it, with the compute-matched one); a rate difference counts only when an
exact test (stats.py: McNemar on the same items, Fisher otherwise) gives p < 0.05. Evaluations are cached under
the checkpoint's content hash, the task's instances and the settings (measuring.cache_key).
"""

from .measuring import TASK_N, TASKS, cache_key, measure
from .report import RECIPES, write_report
from .rules import CLAIMS, verdicts
from .stats import compare, fisher_p, interval, mcnemar

__all__ = [
    "CLAIMS", "RECIPES", "TASKS", "TASK_N", "cache_key", "compare", "fisher_p", "interval", "mcnemar",
    "measure", "verdicts", "write_report",
]  # fmt: skip
