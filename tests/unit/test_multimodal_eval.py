"""Claim 9's scoring (issue 20): the attribute judge reads real renders and their image-tokenizer round trips
back as scenes, captions and drawings are scored by hand-checked rules, and `evaluate` keeps one record per item
(what a paired test needs)."""

import pytest

pytest.importorskip("sklearn")

from dlm.multimodal import ImageTokenizer, Scene, Shape, render, scenes  # noqa: E402
from dlm.multimodal.evaluate import AttributeJudge, evaluate, parse_caption, score_caption, score_drawing  # noqa: E402


@pytest.fixture(scope="module")
def judged():
    tok = ImageTokenizer.fit([render(s) for s in scenes("train", 300)], codes=48, seed=0)
    return tok, AttributeJudge.fit(tok)


def test_the_judge_reads_held_out_renders_and_their_round_trips(judged):
    """Measured at writing: 100 % of the cells of the 302 test renders, and of their round trips through the
    shipped 96-code tokenizer; a drawing is judged against its own caption (right) and another's (wrong)."""
    tok, judge = judged
    test = scenes("test")
    assert judge.accuracy([(render(s), s) for s in test]) >= 0.99
    assert judge.accuracy([(tok.decode(tok.encode(render(s))), s) for s in test[:50]]) >= 0.95
    right = sum(score_drawing(render(s), s.caption(), judge)["correct"] for s in test[:50])
    others = [test[(i + 1) % 50].caption() for i in range(50)]
    wrong = sum(score_drawing(render(s), c, judge)["correct"] for s, c in zip(test[:50], others))
    assert right >= 49 and wrong <= 2


def test_captions_and_drawings_are_scored_by_their_rules(judged):
    _, judge = judged
    red, blue = Shape("circle", "red", 0), Shape("square", "blue", 2)  # red top-left, blue below it
    scene = Scene((red, blue))
    assert parse_caption("a red circle above a blue square") == ([("red", "circle"), ("blue", "square")], "above")
    assert parse_caption("a purple circle") is None and parse_caption("red circle") is None
    assert score_caption("a red circle above a blue square", scene) == {"correct": True, "exact": True}
    assert score_caption("a blue square below a red circle", scene) == {"correct": True, "exact": True}
    assert score_caption("a red circle below a blue square", scene) == {"correct": True, "exact": False}
    assert score_caption("a red circle", scene) == {"correct": False, "exact": False}
    picture = render(scene)
    assert score_drawing(picture, "a red circle above a blue square", judge) == {"correct": True, "attributes": 1.0}
    assert score_drawing(picture, "a blue square below a red circle", judge)["correct"]
    assert score_drawing(picture, "a red circle left of a blue square", judge) == {"correct": False, "attributes": 1.0}
    assert score_drawing(picture, "a red circle above a green square", judge) == {"correct": False, "attributes": 0.5}
    diagonal = render(Scene((Shape("circle", "red", 1), Shape("square", "blue", 2))))
    assert score_drawing(diagonal, "a red circle and a blue square", judge)["correct"]  # either diagonal counts


def test_evaluate_keeps_a_record_per_item(judged, tmp_path):
    from dlm.multimodal.vocab import with_image_tokens
    from dlm.sampling import GenerationConfig
    from dlm.tokenizer import train_tokenizer

    from ..conftest import tiny_lm

    tok, judge = judged
    (tmp_path / "a.txt").write_text("a red circle above a blue square\nWhat colour is the circle? red\n" * 50)
    lm = tiny_lm(with_image_tokens(train_tokenizer([tmp_path / "a.txt"], vocab_size=300), tok.codes), "causal",
                 max_seq_len=160, gen=GenerationConfig(gen_length=8, steps=8))  # fmt: skip
    lm.image_tokenizer = tok
    out = evaluate(lm, judge, n=3, batch_size=2, text_settings={"gen_length": 4})
    assert [out[k]["n"] for k in ("describe", "draw", "digit")] == [3, 3, 3]
    assert out["vqa"]["n"] == sum(len(s.questions()) for s in scenes("test")[:3])
    for k in ("describe", "vqa", "draw", "digit"):
        keys = [set(r) for r in out[k]["items"]]
        assert 0 <= out[k]["accuracy"] <= 1 and all({"id", "correct", "output", "nfe"} <= ks for ks in keys)
    assert len({r["id"] for r in out["draw"]["items"]}) == 3


def _kind(rights: list[bool]) -> dict:
    items = [{"id": str(i), "correct": r, "nfe": 64} for i, r in enumerate(rights)]
    return {"n": len(items), "accuracy": sum(rights) / len(items), "nfe_mean": 64.0, "items": items}


def test_claim_9_verdict_follows_its_preregistered_rule():
    """Done = the exact 95 % interval above 50 %; the twin better = McNemar p < 0.05 on the same items."""
    from dlm.eval.claims.multimodal import section, verdict

    good, bad = [True] * 45 + [False] * 5, [True] * 10 + [False] * 40
    grid = {"file": "g.png", "captions": ["a red circle"]}

    def run(d: dict, a: dict) -> str:
        m = {"multimodal": {"judge_accuracy": 1.0, "grid": grid, "diffusion/pre-registered": d, "ar/twin": a}}
        rows = []
        verdict(m, lambda *r: rows.append(r))
        assert rows[0][0] == 9 and "McNemar" in rows[0][1] and section(m)[0].startswith("## Claim 9")
        return rows[0][2]

    both = {k: _kind(good) for k in ("describe", "vqa", "draw")}
    assert run(both, both) == "confirmed"
    better = {**both, "draw": _kind([True] * 50)}
    assert run({**both, "draw": _kind([True] * 40 + [False] * 10)}, better) == "partly confirmed"  # 10 vs 0 discordant
    assert run({**both, "draw": _kind(bad)}, both) == "refuted"
    assert run({**both, "draw": _kind(bad)}, {**both, "draw": _kind(bad)}) == "inconclusive"
    rows = []
    verdict({"multimodal": {"missing": "runs/multimodal"}}, lambda *r: rows.append(r))
    assert rows[0][2] == "not measured"


def test_claim_9_measure_runs_both_twins_and_draws_the_grid_from_their_drawings(judged, tmp_path):
    """`measure` on a runs root with both twins (tiny random ones here): every row of every kind, and the
    drawings grid made from the drawings the pre-registered rows already made (3 rows × 8 columns of 32 × 4 px)."""
    from PIL import Image

    from dlm.eval.claims.multimodal import GRID, measure
    from dlm.multimodal.vocab import with_image_tokens
    from dlm.sampling import GenerationConfig
    from dlm.tokenizer import train_tokenizer

    from ..conftest import tiny_lm

    tok, _ = judged
    (tmp_path / "a.txt").write_text("a red circle above a blue square\nWhat colour is the circle? red\n" * 50)
    text = with_image_tokens(train_tokenizer([tmp_path / "a.txt"], vocab_size=300), tok.codes)
    for obj, attention in (("diffusion", "bidirectional"), ("ar", "causal")):
        lm = tiny_lm(text, attention, max_seq_len=160, gen=GenerationConfig(gen_length=8, steps=8))
        lm.image_tokenizer = tok
        lm.save_pretrained(tmp_path / "runs" / "multimodal" / obj / "final")
    m = measure(tmp_path / "runs", tmp_path / "out", quick=True)
    assert {"diffusion/pre-registered", "diffusion/fast", "ar/twin"} <= set(m)
    assert m["ar/twin"]["draw"]["n"] == 8 and "digit" not in m["diffusion/fast"]
    with Image.open(tmp_path / "out" / m["grid"]["file"]) as grid:
        assert grid.size == (GRID * (32 * 4 + 4), 3 * (32 * 4 + 4))
    assert measure(tmp_path / "none", tmp_path / "out") == {"missing": str(tmp_path / "none" / "multimodal")}
