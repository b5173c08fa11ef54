"""Task suites: instances are seeded and stable, splits are disjoint and never move, verifiers accept correct
answers (including correct ones the generator did not write) and reject wrong ones."""

import hashlib
import json

import pytest

from dlm.errors import InputError
from dlm.tasks import TASKS, Example, evaluate, get_task, write_sft
from dlm.tasks.countdown import evaluate as count_eval
from dlm.tasks.sudoku import is_solution, parse, solve

# sha256 of the first 20 test prompts: a change here means every published number moves; don't.
PINNED = {"sudoku": "7e755a6eca70a5be", "countdown": "769d493290c0dfc6", "arithmetic": "bfd71258131445ff",
          "facts": "b1e375fa8d699319"}  # fmt: skip


@pytest.mark.parametrize("name", list(TASKS))
def test_splits_are_pinned_disjoint_and_prefix_stable(name):
    t = get_task(name)
    test = t.examples("test", 20)
    digest = hashlib.sha256("\n".join(e.prompt for e in test).encode()).hexdigest()[:16]
    assert digest == PINNED[name]
    assert [e.prompt for e in get_task(name).examples("test", 5)] == [e.prompt for e in test[:5]]
    train = t.examples("train", 200)
    assert not {e.prompt for e in train} & {e.prompt for e in t.examples("test", 20)}
    keys = {t.split_key(e) for e in train}
    assert not keys & {t.split_key(e) for e in test}  # e.g. no Sudoku base puzzle on both sides
    assert all(t.verify(e, e.answer) for e in train[:50] + test)


def test_sudoku_cells_layout_is_one_fixed_length_line_of_the_same_puzzles():
    """The cells layout (81 digits, one token per cell with a character tokenizer) changes the text, not the
    puzzles: the grid layout still gives the digest pinned before cells existed, with the same digits."""
    from dlm.tokenizer import train_tokenizer

    cells, grid = get_task("sudoku").examples("test", 20), get_task("sudoku", layout="grid").examples("test", 20)
    assert hashlib.sha256("\n".join(e.prompt for e in grid).encode()).hexdigest()[:16] == "4146af34e07f2fff"
    assert [parse(c.prompt) for c in cells] == [parse(g.prompt) for g in grid]
    assert [parse(c.answer) for c in cells] == [parse(g.answer) for g in grid]
    assert all(len(e.prompt) == len(e.answer) == 81 and e.prompt.isdigit() for e in cells)
    chars = train_tokenizer([], 263, texts=[cells[0].prompt])  # no merges: one token per character
    assert all(len(chars.encode(e.prompt)) == len(chars.encode(e.answer)) == 81 for e in cells)
    with pytest.raises(InputError, match="layout"):
        get_task("sudoku", layout="rows")


def test_sudoku_reads_outside_puzzles_and_names_bad_lines(tmp_path):
    t = get_task("sudoku")
    exs = t.examples("test", 3)
    good = tmp_path / "p.jsonl"
    good.write_text("".join(json.dumps({"puzzle": e.prompt, "solution": e.answer}) + "\n\n" for e in exs))
    got = t.load_examples(good)
    assert [(e.prompt, e.answer) for e in got] == [(e.prompt, e.answer) for e in exs]
    assert [e.index for e in got] == [1, 3, 5]  # line numbers
    assert len(t.load_examples(good, limit=2)) == 2
    assert t.verify(got[0], exs[0].answer) and not t.verify(got[0], exs[1].answer)
    p, s = exs[0].prompt, exs[0].answer
    wrong = s[:80] + ("1" if s[80] != "1" else "2")
    bad = [
        ("{not json", "line 1: not JSON"),
        (json.dumps({"puzzle": p[:80], "solution": s}), "line 1: puzzle: got"),
        (json.dumps({"puzzle": p.replace("0", "."), "solution": s}), "puzzle: got"),
        (json.dumps({"puzzle": p}), "solution: got None"),
        (json.dumps({"puzzle": p, "solution": p}), "solution: got"),  # zeros are not a solution
        (json.dumps({"puzzle": p, "solution": wrong}), "solution: is not a solution"),
        (json.dumps([p, s]), "puzzle: got None"),
    ]
    for i, (line, msg) in enumerate(bad):
        f = tmp_path / f"bad{i}.jsonl"
        f.write_text(line + "\n")
        with pytest.raises(InputError, match=msg):
            t.load_examples(f)
    with pytest.raises(InputError, match="does not exist"):
        t.load_examples(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no examples"):
        t.load_examples(tmp_path / "empty.jsonl")
    with pytest.raises(InputError, match="does not read examples"):
        get_task("arithmetic").load_examples(good)


def test_sudoku_puzzles_are_unique_and_verifier_is_exact():
    t = get_task("sudoku", givens=36)
    for ex in t.examples("test", 5):
        p = parse(ex.prompt)
        assert len(p) == 81 and sum(v > 0 for v in p) == 36
        assert solve(p, limit=2)[0] == 1
        sol = parse(ex.answer)
        assert is_solution(p, sol)
    ex = t.examples("test", 1)[0]
    sol, puzzle = parse(ex.answer), parse(ex.prompt)
    assert t.verify(ex, ex.answer.replace("\n", " "))  # layout does not matter, digits do
    blanks = [i for i, v in enumerate(puzzle) if v == 0]
    i, j = next((a, b) for a in blanks for b in blanks if a // 9 == b // 9 and sol[a] != sol[b])
    swapped = list(sol)
    swapped[i], swapped[j] = sol[j], sol[i]  # same row: still a permutation per row, columns now break
    assert not t.verify(ex, " ".join(map(str, swapped)))
    assert not t.verify(ex, " ".join(map(str, sol[:80])))  # too short
    assert not t.verify(ex, ex.prompt)  # the puzzle itself (zeros)
    changed = list(sol)
    g = next(i for i, v in enumerate(puzzle) if v)
    changed[g] = changed[g] % 9 + 1
    assert not t.verify(ex, " ".join(map(str, changed)))
    assert t.score(ex, ex.answer)["cell_accuracy"] == 1.0


def test_countdown_steps_layout_is_fixed_length_and_replayed_exactly():
    t = get_task("countdown")
    words = get_task("countdown", layout="expression").examples("test", 20)
    steps = t.examples("test", 20)  # the same instances as the expression layout (pinned before steps existed)
    assert hashlib.sha256("\n".join(e.prompt for e in words).encode()).hexdigest()[:16] == "fcb1bd97c27224a0"
    assert [e.meta for e in steps] == [e.meta for e in words]
    assert {len(e.prompt) for e in steps} == {22} and {len(e.answer) for e in steps} == {35}  # 12 (n - 1) - 1
    ex = Example("countdown", 0, "", "", {"numbers": [2, 3, 4, 6], "target": 24})
    assert t.verify(ex, "006*004=024,003-002=001,024*001=024")  # any order of independent steps
    assert t.verify(ex, "6*4=24, 3-2=1, 24*1=24")  # widths and spaces are not checked, values are
    assert t.verify(ex, "6 * 4 * (3 - 2)")  # an expression is still an answer
    for bad in (
        "006*004=024,003-002=001,024*001=025",  # the last result is wrong
        "006*004=024,003-002=001",  # too few steps: 24 and 1 left
        "006*004=024,004-002=002,024*002=048",  # 4 used twice, 3 never
        "006*004=024,003-002=001,024/005=004",  # 5 was never made
        "006/004=001,003-002=001,001*001=001",  # 6 / 4 is not exact
        "006*004=024,003-002=001,024*001=024,024+000=024",  # one step too many
        "006*004=024;003-002=001;024*001=024", "",
    ):
        assert not t.verify(ex, bad), bad
    # where a wrong answer goes wrong: exact arithmetic, operands available (worked by hand)
    assert t.score(ex, "006*004=024,003-002=001,024*001=024") == {
        "correct": True, "step_arithmetic": 1.0, "step_operands": 1.0}  # fmt: skip
    s = t.score(ex, "006*004=025,003-002=001,024*001=024")  # 6*4 is not 25; 24 was then never made
    assert (s["correct"], s["step_arithmetic"], s["step_operands"]) == (False, 2 / 3, 2 / 3)
    s = t.score(ex, "006*006=036,003-002=001,x")  # 6 used twice; a malformed step fails both checks
    assert (s["step_arithmetic"], s["step_operands"]) == (2 / 3, 1 / 3)
    with pytest.raises(InputError, match="layout"):
        get_task("countdown", layout="rpn")


def test_countdown_accepts_any_correct_expression_and_nothing_else():
    t = get_task("countdown", layout="expression")
    ex = Example("countdown", 0, "Numbers: 2 3 4 6. Target: 24.", "", {"numbers": [2, 3, 4, 6], "target": 24})
    assert not t.verify(ex, "(6 - 2) * 4 * (3 / 3)")  # right value, but 3 used twice and 2 once
    assert t.verify(ex, "6 * 4 * (3 - 2)")
    assert t.verify(ex, "(6 / 3) * 4 * 3") is False  # 4 numbers but 3 twice and 2 missing
    assert t.verify(ex, "6 * 4 + 3 - 2 - 1") is False  # 1 is not given
    assert t.verify(ex, "6 * 4 * (3 - 2) = 24")  # a trailing "= 24" is fine
    for bad in ("24", "6 ** 2 - 4 * 3", "__import__('os')", "6 * 4 * (3 - 2", "", "six times four", "6*4*(3//2)"):
        assert not t.verify(ex, bad), bad
    assert count_eval("1 / 0") is None
    for e in t.examples("test", 20):
        assert t.verify(e, e.answer) and count_eval(e.answer)[0] == e.meta["target"]


def test_arithmetic_verifier():
    t = get_task("arithmetic", digits=3)
    ex = t.examples("test", 1)[0]
    a, b, op = ex.meta["a"], ex.meta["b"], ex.meta["op"]
    right = a + b if op == "+" else a * b
    assert ex.answer == str(right) and t.verify(ex, f" {right}\n") and t.verify(ex, f"{right:,}")
    assert not t.verify(ex, str(right + 1)) and not t.verify(ex, "") and not t.verify(ex, f"{right}0")
    with pytest.raises(InputError, match="ops"):
        get_task("arithmetic", ops="-")


def test_arithmetic_padded_layout_fixes_every_answers_length():
    plain, padded = get_task("arithmetic", digits=3), get_task("arithmetic", digits=3, layout="padded")
    for split in ("train", "test"):  # the same instances, split alike
        a, b = plain.examples(split, 50), padded.examples(split, 50)
        assert [x.prompt for x in a] == [x.prompt for x in b]
        assert [int(x.answer) for x in a] == [int(x.answer) for x in b]
        assert {len(x.answer) for x in b} == {4, 6}  # 3 + 1 digits for +, 2 * 3 for *
        assert all(len(x.answer) == (4 if x.meta["op"] == "+" else 6) for x in b)
    ex = next(x for x in padded.examples("test", 50) if x.meta["a"] + x.meta["b"] < 1000 and x.meta["op"] == "+")
    value = ex.meta["a"] + ex.meta["b"]
    assert ex.answer == f"0{value}"  # e.g. 123 + 456 = 0579
    assert padded.verify(ex, ex.answer) and padded.verify(ex, str(value)) and not padded.verify(ex, f"0{value + 1}")
    with pytest.raises(InputError, match="layout"):
        get_task("arithmetic", layout="reversed")


def test_facts_world_prose_and_hallucination_scoring():
    t = get_task("facts")
    docs = " ".join(t.documents())
    known = [n for n in t.names if t.known(n)]
    unknown = [n for n in t.names if not t.known(n)]
    assert known and unknown and all(n in docs for n in known[:50]) and not any(n in docs for n in unknown)
    test = t.examples("test", 300)
    k = next(e for e in test if e.meta["known"])
    u = next(e for e in test if not e.meta["known"])
    assert k.answer == t.people[k.meta["person"]][k.meta["attr"]] and u.answer == "unknown"
    assert t.score(k, k.answer + ".") == {"correct": True, "abstained": False, "hallucinated": False,
                                            "known": True}
    assert t.score(k, "unknown") == {"correct": False, "abstained": True, "hallucinated": False, "known": True}
    assert t.score(u, "Velmora")["hallucinated"] and t.score(u, "Unknown")["correct"] and not t.score(u, "x")["known"]
    wrong = next(v for v in ("1850", "1851") if v != k.answer)
    assert t.score(k, wrong)["hallucinated"]
    # unknown people asked about in training are never asked about in the test
    train = t.examples("train", 600)
    assert not {e.meta["person"] for e in train if not e.meta["known"]} & {e.meta["person"] for e in test
                                                                           if not e.meta["known"]}  # fmt: skip


def test_bad_options_are_named():
    with pytest.raises(InputError, match="task"):
        get_task("chess")
    with pytest.raises(InputError, match="givens"):
        get_task("sudoku", givens=5)
    with pytest.raises(InputError, match="options"):
        get_task("countdown", colour=3)
    with pytest.raises(InputError, match="split"):
        get_task("arithmetic").examples("valid", 3)


def test_write_sft_is_chat_jsonl_the_trainer_reads(tmp_path):
    import dlm

    info = write_sft(get_task("facts"), "train", 30, tmp_path / "facts.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "facts.jsonl").read_text().splitlines()]
    assert len(rows) == 30 + info["extras"] and info["examples"] == 30 and info["extras"] > 0
    bios = [r for r in rows if r["messages"][0]["content"].startswith("Tell me about")]
    assert len(bios) == info["extras"] and all(r["index"] < 0 for r in bios)
    tok = dlm.load("builtin").tokenizer
    prompt, answer = tok.sft_example(rows[0]["messages"])
    assert tok.decode(answer, skip_special_tokens=True) == rows[0]["messages"][-1]["content"]


def test_evaluate_runs_the_model_through_the_chat_template():
    import dlm

    lm = dlm.load("builtin")
    t = get_task("arithmetic", digits=2)
    res = evaluate(lm, t, t.examples("test", 3), batch_size=2, seed=0)
    assert res["n"] == 3 and 0.0 <= res["accuracy"] <= 1.0 and res["gen_length"] % 32 == 0
    assert res["nfe_mean"] > 0 and len(res["examples"]) == 3 and "output" in res["examples"][0]
    again = evaluate(lm, t, t.examples("test", 3), batch_size=3, seed=0)
    assert [r["output"] for r in again["examples"]] == [r["output"] for r in res["examples"]]  # batch-invariant
    exs = t.examples("test", 3)
    assert [it["id"] for it in res["items"]] == [e.index for e in exs]  # one record per item, for paired tests
    assert [it["correct"] for it in res["items"]] == [r["correct"] for r in res["examples"]]


def test_eval_task_data_errors_name_the_line_before_loading_a_model(tmp_path):
    from typer.testing import CliRunner

    from dlm.cli import app

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"puzzle": "0" * 81, "solution": "1" * 80}) + "\n")
    r = CliRunner().invoke(app, ["eval", "task", "sudoku", "--model", "no-such-model", "--data", str(f)])
    assert r.exit_code == 2 and f"{f} line 1: solution: got" in r.output, r.output


def test_first_result_probe_hides_the_result_then_everything_after_it(tmp_path):
    """An oracle that sees the gold answer through the mask counts every item in both conditions; a model that
    only copies what is visible gets the result only while the next step still shows it."""
    import torch

    from dlm.tasks.countdown import first_result_probe
    from dlm.tokenizer import train_tokenizer

    (tmp_path / "a.txt").write_text("012+004=016,016*004=064\n" * 20)
    tok = train_tokenizer([tmp_path / "a.txt"], vocab_size=263)  # bytes only: one token per character
    exs = get_task("countdown").examples("test", 5)

    class Copier(torch.nn.Module):  # predicts each masked slot as the token 4 slots later (where 016 reappears)
        config = type("C", (), {"mask_token_id": tok.mask_token_id})

        def forward(self, x):
            logits = torch.zeros(*x.shape, tok.vocab_size)
            src = torch.roll(x, -4, dims=1)
            return logits.scatter(2, src[..., None], 1.0)

    lm = type("LM", (), {"tokenizer": tok, "model": Copier(), "device": torch.device("cpu")})()
    r = first_result_probe(lm, exs)
    assert r["n"] == 5 and r["masked"] == 0 and r["visible"] == sum(
        ex.answer[8:11] == ex.answer[12:15] for ex in exs)  # fmt: skip
