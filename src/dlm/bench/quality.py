"""What `dlm bench` measures besides speed: agreement between methods, degeneration (repeated n-grams), whether
completions of held-out signatures parse, and the speed-vs-quality frontier (and its plot)."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..errors import InputError


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Exact token agreement of two sets of generations (row by row, position by position); a length
    difference counts as disagreement. 1.0 = identical."""
    same = total = 0
    for x, y in zip(a, b):
        same += sum(u == v for u, v in zip(x, y))
        total += max(len(x), len(y))
    return same / total if total else 1.0


def repeated_ngrams(tokens: list[int], n: int = 4) -> float:
    """The share of a sequence's n-grams that repeat an earlier n-gram of the same sequence (0 when it has none)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def completion_quality(texts: list[str], gens: list[list[int]], tokenizer, G: int) -> dict:
    """parse_rate and rep4 of generations that complete the signatures `texts` (one pass over the prompts)."""
    from ..eval.code import function_body_parses, heal_prompt

    eos = getattr(tokenizer, "eos_token_id", None)
    parses, rep = [], []
    for prompt, g in zip(texts, gens):
        g = g[: g.index(eos)] if eos is not None and eos in g else g
        text = tokenizer.decode(g, skip_special_tokens=True)
        ws = heal_prompt(prompt)[1]  # the whitespace the prompt was fed without
        text = text[len(ws) :] if ws and text.startswith(ws) else text
        parses.append(function_body_parses(prompt, text, truncated=len(g) >= G))
        rep.append(repeated_ngrams(g))
    return {"parse_rate": sum(parses) / len(parses), "rep4": statistics.mean(rep)}


def frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (speed, quality) that no other point beats on both (ties kept), by speed."""
    keep = [
        i for i, (x, y) in enumerate(points) if not any((u >= x and v >= y) and (u > x or v > y) for u, v in points)
    ]
    return sorted(keep, key=lambda i: points[i][0])


def plot_frontier(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """PNG of tok/s (log x) against parse rate, one colour per batch size, its frontier as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InputError("--plot", "needs matplotlib (pip install 'dlm[eval]')") from e
    rows = [r for r in rows if r.get("parse_rate") is not None]
    if not rows:
        raise InputError("--plot", "no parse rates to plot: the prompts need task data (--task-data)")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for B in sorted({r["batch"] for r in rows}):
        rs = [r for r in rows if r["batch"] == B]
        pts = [(r["tok_s"], r["parse_rate"]) for r in rs]
        dots = ax.scatter(*zip(*pts), label=f"batch {B}", zorder=3)
        front = frontier(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color=dots.get_facecolor()[0], alpha=0.5)
        for r, (x, y) in zip(rs, pts):
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens / s (log)")
    ax.set_ylabel("completions that parse")
    ax.set_title(title or "dlm bench: speed against quality (lines: each batch size's frontier)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
