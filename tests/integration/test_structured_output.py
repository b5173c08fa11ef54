"""Structured output through llguidance on the real built-in pair: whatever the regex, JSON Schema or Lark
grammar (drawn by Hypothesis), greedy or sampled, the diffusion model's and the AR twin's outputs match it;
rows are independent; tokens committed out of order that the grammar refuses go back to noise."""

import json
import re

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dlm
from dlm.cli import app
from dlm.errors import InputError
from dlm.sampling import GenerationConfig, generate
from dlm.sampling.constraints import GrammarCompiler, StructuredOutput

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


@pytest.fixture(scope="module")
def pair():
    return dlm.load("builtin"), dlm.load("builtin-ar")


@pytest.fixture(scope="module")
def compiler(pair):
    lm = pair[0]
    return GrammarCompiler(lm.tokenizer, lm.model.config.vocab_size, lm.tokenizer.eos_token_id)


ATOMS = ["[0-9]", "[a-z]", "[A-Z]", "(yes|no)", "-", "_", r"\.", "x", "(ab|cd)"]
regexes = st.lists(st.tuples(st.sampled_from(ATOMS), st.integers(1, 3), st.integers(0, 2)), min_size=1, max_size=4).map(
    lambda parts: "".join(f"{a}{{{lo},{lo + extra}}}" for a, lo, extra in parts)
)
sampling = st.sampled_from([{"temperature": 0.0}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.8, "seed": 11}])
PROMPTS = ["x = ", "def f(a, b):\n    return ", "# id: ", "The answer is "]


def _run(lm, prompt: str, spec, **sampling):
    cfg = dict(gen_length=40, steps=40, block_length=8, **sampling)
    return lm.generate(prompt, structured_output=spec, **cfg)[0].text


@SETTINGS
@given(regex=regexes, prompt=st.sampled_from(PROMPTS), kw=sampling)
def test_outputs_match_any_regex(pair, regex, prompt, kw):
    for lm in pair:
        text = _run(lm, prompt, {"regex": regex}, **kw)
        assert re.fullmatch(regex, text), (lm.path, regex, text)


FIELDS = {
    "boolean": {"type": "boolean"},
    "integer": {"type": "integer", "minimum": 0, "maximum": 999},
    "enum": {"enum": ["red", "green", "blue"]},
    "string": {"type": "string", "maxLength": 6, "pattern": "^[a-z]*$"},
}
schemas = st.dictionaries(st.sampled_from(["a", "name", "n", "ok", "key"]), st.sampled_from(sorted(FIELDS)),
                          min_size=1, max_size=3).map(
    lambda props: {"type": "object", "properties": {k: FIELDS[v] for k, v in props.items()},
                   "required": sorted(props), "additionalProperties": False}
)  # fmt: skip


@SETTINGS
@given(schema=schemas, prompt=st.sampled_from(PROMPTS), kw=sampling)
def test_outputs_validate_under_any_json_schema(pair, schema, prompt, kw):
    validator = jsonschema_rs.validator_for(schema)
    for lm in pair:
        text = _run(lm, prompt, {"json": schema}, **kw)
        assert validator.is_valid(json.loads(text)), (lm.path, schema, text)


WORDS = ["red", "green", "cat", "dog", "42", "x", "def", "("]
rules = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3, unique=True), min_size=1, max_size=3)


@SETTINGS
@given(alternatives=rules, prompt=st.sampled_from(PROMPTS), kw=sampling)
def test_outputs_parse_under_any_lark_grammar(pair, alternatives, prompt, kw):
    # start: r0 " " r1 ...; each rule a choice of words: the language is also a regex to check against
    names = [f"r{i}" for i in range(len(alternatives))]
    lark = "start: " + ' " " '.join(names) + "\n" + "".join(
        f"{n}: " + " | ".join(json.dumps(w) for w in ws) + "\n" for n, ws in zip(names, alternatives)
    )
    check = " ".join("(" + "|".join(re.escape(w) for w in ws) + ")" for ws in alternatives)
    for lm in pair:
        text = _run(lm, prompt, {"grammar": lark}, **kw)
        assert re.fullmatch(check, text), (lm.path, lark, text)


def test_a_constrained_row_gives_the_same_tokens_in_any_batch(pair, compiler):
    lm = pair[0]
    tok = lm.tokenizer
    specs = [StructuredOutput(regex="[a-z]{2,6}-[0-9]{1,3}"), None, StructuredOutput(json_object=True)]
    cons = [compiler.compile(s) if s is not None else None for s in specs]
    prompts = [tok.encode_prompt(p) for p in ["id = ", "import os\n", "config = "]]
    cfg = GenerationConfig(gen_length=24, steps=24, block_length=8, temperature=0.7, seed=5)
    together = generate(lm.model, prompts, cfg, constraints=cons, mask_token_id=tok.mask_token_id)
    for i in range(3):
        alone = generate(lm.model, [prompts[i]], cfg, constraints=[cons[i]], mask_token_id=tok.mask_token_id)
        assert alone.sequences[0] == together.sequences[i]
    assert re.fullmatch("[a-z]{2,6}-[0-9]{1,3}", tok.decode(together.sequences[0], skip_special_tokens=True))


def test_tokens_committed_out_of_order_that_the_grammar_refuses_go_back_to_noise(pair, compiler):
    # two steps per 8-token block: the last commits everything at once, far past the frontier; the grammar
    # refuses what does not fit, those positions are denoised again (more steps), and the output still matches
    lm = pair[0]
    tok = lm.tokenizer
    regex = "(yes|no)-[0-9]{2}-(red|blue)"
    cfg = GenerationConfig(gen_length=16, steps=4, block_length=8)
    prompt = [tok.encode_prompt("x = ")]
    free = generate(lm.model, prompt, cfg, mask_token_id=tok.mask_token_id)
    out = generate(lm.model, prompt, cfg, constraints=[compiler.compile(StructuredOutput(regex=regex))],
                   mask_token_id=tok.mask_token_id)  # fmt: skip
    assert not re.fullmatch(regex, tok.decode(free.sequences[0], skip_special_tokens=True))
    assert re.fullmatch(regex, tok.decode(out.sequences[0], skip_special_tokens=True))
    assert out.steps[0] > 2  # a refused token cost extra steps: 2 steps per block would have ended it


def test_bad_constraints_are_refused_naming_the_field(pair, compiler):
    lm = pair[0]
    with pytest.raises(InputError) as e:
        compiler.compile(StructuredOutput(regex="(["))
    assert e.value.field == "structured_output" and "unclosed" in str(e.value)
    with pytest.raises(InputError) as e:
        compiler.compile(StructuredOutput(json={"type": "objec"}))
    assert "objec" in str(e.value)
    with pytest.raises(InputError) as e:
        StructuredOutput(regex="a", json_object=True)
    assert "exactly one" in str(e.value)
    with pytest.raises(InputError) as e:
        lm.chat_batch([[{"role": "user", "content": "hi"}]], structured_outputs=[{"grammar": "start: nothing"}])
    assert e.value.field == "structured_outputs[0]"
    with pytest.raises(InputError) as e:
        lm.generate("x", templates=["a<|mask|>"], structured_output={"regex": "a"}, gen_length=4, steps=4)
    assert e.value.field == "constraints[0]"


def test_cli_flags(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                                  "additionalProperties": False}))  # fmt: skip
    r = CliRunner().invoke(app, ["generate", "x = ", "--json-schema", str(schema), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(json.loads(r.output.strip().splitlines()[-1])["text"]) in ({"ok": True}, {"ok": False})
    r = CliRunner().invoke(app, ["generate", "--model", "builtin-ar", "v", "--regex", "[0-9]{4}"])
    assert r.exit_code == 0 and re.fullmatch("v[0-9]{4}", r.output.strip()), r.output
    r = CliRunner().invoke(app, ["generate", "x", "--regex", "a", "--json-object"])
    assert r.exit_code != 0 and "--json-object" in r.output
    r = CliRunner().invoke(app, ["generate", "x", "--grammar", str(tmp_path / "missing.lark")])
    assert r.exit_code != 0 and "--grammar" in r.output
