"""Code-quality evaluations on Python source: do completions of held-out function signatures parse, and how well
are single lines and short token spans removed from held-out functions filled back in (exact match, `ast`-valid).

Token healing (``heal=True``, the default): with a byte-level BPE a newline and the next line's indentation are one
token (``"\\n   "``), and a space is part of the following word's token (``" return"``). A prompt that ends in a bare
``"\\n"`` or in trailing spaces therefore ends mid-token, which the model never saw in training. Healing feeds the
model the prompt/prefix without its trailing whitespace and lets it write that whitespace itself; the metrics are
computed on the original task (the task strings themselves do not change).
"""

from __future__ import annotations

import ast
import io
import random
import re
import textwrap
import time
import tokenize
from dataclasses import dataclass
from typing import Iterable, Literal

from ..errors import InputError

INFILL_KINDS = ("line", "span")
_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


@dataclass
class InfillTask:
    """A function cut in three: prefix + target + suffix == source."""

    prefix: str
    target: str
    suffix: str
    source: str


def _parses(src: str) -> bool:
    try:
        ast.parse(src)
    except _PARSE_ERRORS:
        return False
    return True


def _outer_defs(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions not nested in another function: module-level ones (also under if/try/...) and methods."""
    found, stack = [], [tree]
    while stack:
        for child in ast.iter_child_nodes(stack.pop()):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append(child)
            elif not isinstance(child, ast.Lambda):
                stack.append(child)
    return sorted(found, key=lambda d: (d.lineno, d.col_offset))


def extract_functions(texts: Iterable[str], *, min_lines: int = 3, max_lines: int = 40) -> list[str]:
    """Every def (module-level functions and methods; nested functions stay inside their parent) of each text
    that parses, dedented, decorators excluded; kept if it parses alone and has min..max lines. Exact duplicates
    are dropped; the order is the texts' order, then source order."""
    out: list[str] = []
    seen: set[str] = set()
    for text in texts:
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # ast counts lines at "\n" only after this
        try:
            tree = ast.parse(text)
        except _PARSE_ERRORS:
            continue
        lines = text.split("\n")
        for node in _outer_defs(tree):
            src = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno])).rstrip("\n") + "\n"
            if min_lines <= src.count("\n") <= max_lines and src not in seen and _parses(src):
                seen.add(src)
                out.append(src)
    return out


def _tokens(src: str) -> list[tokenize.TokenInfo] | None:
    try:
        return list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, SyntaxError):
        return None


def _header_end(toks: list[tokenize.TokenInfo]) -> tuple[int, int] | None:
    """(row, col) just after the ':' that ends the def header: the first ':' outside brackets."""
    depth = 0
    for t in toks:
        if t.type == tokenize.OP:
            if t.string in ("(", "[", "{"):
                depth += 1
            elif t.string in (")", "]", "}"):
                depth -= 1
            elif t.string == ":" and depth == 0:
                return t.end
    return None


def signature(source: str) -> str | None:
    """The header of a function (through the ':' that ends it; a trailing comment is dropped) plus "\\n"."""
    toks = _tokens(source)
    end = _header_end(toks) if toks else None
    if end is None:
        return None
    lines = source.split("\n")
    row, col = end
    return "\n".join(lines[: row - 1] + [lines[row - 1][:col]]) + "\n"


def completion_tasks(functions: list[str], n: int, seed: int) -> list[str]:
    """n prompts (at most one per function; n capped at the number of functions): the signatures of
    functions sampled without replacement with random.Random(seed)."""
    sigs = [s for s in map(signature, functions) if s]
    return random.Random(seed).sample(sigs, min(n, len(sigs)))


def function_body_parses(prompt: str, completion: str, *, truncated: bool = False) -> bool:
    """Whether prompt + completion parses, the completion cut where the function ends (at its first non-blank
    line with zero indentation). An empty or whitespace-only body is invalid. `truncated`: the completion was
    cut by the length budget; if the function has not ended, its last, possibly partial line is dropped and
    the complete lines are judged (an open block or bracket at the cut still fails)."""
    body, ended = [], False
    for line in re.split(r"(?<=\n)", completion):
        if line.strip() and not line[0].isspace():
            ended = True
            break
        body.append(line)
    cut = "".join(body)
    if truncated and not ended:
        cut = cut[: cut.rfind("\n") + 1]
    if not cut.strip():
        return False
    return _parses(prompt + cut) or _parses(prompt + cut + "\n")


def _code_rows(toks: list[tokenize.TokenInfo]) -> dict[int, list[tuple[int, int]]]:
    """row -> (start col, end col) of its code tokens, for rows no multi-line token (a docstring) touches."""
    rows: dict[int, list[tuple[int, int]]] = {}
    bad: set[int] = set()
    for t in toks:
        if t.type in _NOT_CODE:
            continue
        if t.start[0] != t.end[0]:
            bad.update(range(t.start[0], t.end[0] + 1))
        else:
            rows.setdefault(t.start[0], []).append((t.start[1], t.end[1]))
    return {r: v for r, v in rows.items() if r not in bad}


def _infill_task(source: str, kind: str, rng: random.Random) -> InfillTask | None:
    toks = _tokens(source)
    end = _header_end(toks) if toks else None
    if end is None:
        return None
    rows = {r: v for r, v in _code_rows(toks).items() if r > end[0] and (kind == "line" or len(v) >= 2)}
    if not rows:
        return None
    lines = source.split("\n")
    row = rng.choice(sorted(rows))
    line = lines[row - 1]
    if kind == "line":
        c0, c1 = len(line) - len(line.lstrip()), len(line)
    else:
        spans = rows[row]
        k = rng.randint(2, min(6, len(spans)))
        i = rng.randrange(len(spans) - k + 1)
        c0, c1 = spans[i][0], spans[i + k - 1][1]
    start = sum(len(x) + 1 for x in lines[: row - 1])
    return InfillTask(source[: start + c0], source[start + c0 : start + c1], source[start + c1 :], source)


def infill_tasks(functions: list[str], n: int, seed: int, kind: Literal["line", "span"] = "line") -> list[InfillTask]:
    """n infilling tasks (one per function, functions in a seeded random order; fewer if too few qualify).

    "line": the content of one random body line after its indentation (the indentation stays in the prefix,
    the newline in the suffix). "span": 2-6 consecutive Python tokens of one random body line. Comment-only
    lines and lines inside multi-line strings are never chosen."""
    if kind not in INFILL_KINDS:
        raise InputError("kind", f"got {kind!r}; allowed: {', '.join(INFILL_KINDS)}")
    rng = random.Random(seed)
    tasks: list[InfillTask] = []
    for i in rng.sample(range(len(functions)), len(functions)):
        if len(tasks) >= n:
            break
        task = _infill_task(functions[i], kind, rng)
        if task is not None:
            tasks.append(task)
    return tasks


def heal_prompt(text: str, heal: bool = True) -> tuple[str, str]:
    """(what the model is fed, the trailing whitespace it has to write itself)."""
    fed = text.rstrip() if heal else text
    return (fed, text[len(fed) :]) if fed else (text, "")


def fit_to_model(lm, functions: list[str], *, task: str = "infill", gen_length: int = 0, margin: int = 8) -> list[str]:
    """The functions whose task fits the model's context: the whole function (+ margin) for infilling,
    signature + gen_length for completion."""
    limit = lm.model.config.max_seq_len
    enc = lambda s: len(lm.tokenizer.encode(s, parse_special=False))
    if task == "complete":
        return [f for f in functions if (s := signature(f)) and enc(s) + gen_length <= limit]
    return [f for f in functions if enc(f) + margin <= limit]


def evaluate_completion(
    lm,
    prompts: list[str],
    *,
    gen_length: int = 64,
    steps: int | None = None,
    block_length: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    batch_size: int = 8,
    heal: bool = True,
    keep_rows: bool = False,
    **sampling,
) -> dict:
    """Complete each signature and count the completions that parse (function_body_parses). `ended_rate` is
    the share whose function visibly ended (a zero-indent line, or EOS before gen_length); a completion cut off by
    gen_length inside the function is judged on its complete lines (see function_body_parses). `sampling`:
    other generation settings (policy, top_p, ...). `keep_rows`: every task's outcome under "rows" (paired tests)."""
    rows, nfe = [], []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        fed = [heal_prompt(p, heal) for p in batch]
        outs = lm.generate(
            [f for f, _ in fed],
            gen_length=gen_length,
            steps=steps,
            block_length=block_length,
            temperature=temperature,
            seed=seed,
            **sampling,
        )
        for p, (_, ws), o in zip(batch, fed, outs):
            text = o.text[len(ws) :] if ws and o.text.startswith(ws) else o.text
            truncated = len(o.tokens) >= gen_length
            ended = not truncated or any(line.strip() and not line[0].isspace() for line in text.split("\n"))
            parses = function_body_parses(p, text, truncated=truncated)
            rows.append({"prompt": p, "completion": text, "parses": parses, "ended": ended})
            nfe.append(o.nfe)
    examples = [{k: r[k] for k in ("prompt", "completion", "parses", "ended")} for r in rows[:5]]
    return _summary(rows, nfe, t0, {"parse_rate": "parses", "ended_rate": "ended"}, examples, keep_rows)


def _summary(rows, nfe, t0, rates: dict[str, str], examples: list[dict], keep_rows: bool = False) -> dict:
    """n, each rate (share of rows whose boolean key is true), examples, wall seconds and mean NFE (and every row
    with `keep_rows`)."""
    n = max(len(rows), 1)
    out: dict = {"n": len(rows)}
    out.update({name: sum(r[key] for r in rows) / n for name, key in rates.items()})
    out.update({"examples": examples, "seconds": time.perf_counter() - t0, "nfe_mean": sum(nfe) / n})
    if keep_rows:
        out["rows"] = rows
    return out


def _writes_code(fill: str) -> bool:
    """Whether a fill has a line that is neither blank nor a comment."""
    return any(line.strip() and not line.lstrip().startswith("#") for line in fill.split("\n"))


def _first_line(text: str, keep_leading_ws: bool) -> str:
    """A left-to-right continuation, up to the end of the line it writes."""
    if keep_leading_ws:
        lead = len(text) - len(text.lstrip())
        return text[:lead] + text[lead:].split("\n", 1)[0]
    return text.split("\n", 1)[0]


def evaluate_infill(
    lm,
    tasks: list[InfillTask],
    *,
    steps: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    heal: bool = True,
    keep_rows: bool = False,
    **sampling,
) -> dict:
    """Fill each task and score exact match (stripped fill == stripped target) and whether prefix + fill + suffix
    parses (a fill that is blank or only comments never counts: deleting a line often leaves valid code).

    The fill length is an oracle: the number of tokens of the removed text (with the healed whitespace) under the
    model's tokenizer, so the model is told how much to write. A diffusion model with full attention sees prefix and
    suffix; a model that cannot see the suffix continues the prefix with the same token budget, and its fill is its
    text up to the end of the line it writes (prefix-only completion): the AR twin, and a block-diffusion model
    (its gap's blocks attend only to earlier blocks, never to the suffix after them)."""
    prefix_only = lm.is_causal or getattr(lm.model.config, "attention", None) == "block_causal"
    rows, nfe = [], []
    t0 = time.perf_counter()
    for t in tasks:
        prefix, ws = heal_prompt(t.prefix, heal)
        length = len(lm.tokenizer.encode(ws + t.target, parse_special=False))
        kw = {"steps": min(steps, length)} if steps else {}
        o = lm.infill(prefix, t.suffix, length, seed=seed, temperature=temperature, **kw, **sampling)
        fill = _first_line(o.text, "\n" in ws) if prefix_only else o.text
        rows.append(
            {
                "prefix": t.prefix,
                "target": t.target,
                "suffix": t.suffix,
                "fill": fill,
                "exact_match": fill.strip() == t.target.strip(),
                "ast_valid": _writes_code(fill) and _parses(prefix + fill + t.suffix),
            }
        )
        nfe.append(o.nfe)
    return _summary(rows, nfe, t0, {"exact_match": "exact_match", "ast_valid": "ast_valid"}, rows[:5], keep_rows)
