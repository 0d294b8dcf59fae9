import ast
import random
import re
from collections import Counter

import checkers
import pytest

from interp.errors import TaskError
from interp.tasks import SPLITS, TASKS, generate, get_task, read_jsonl, write_jsonl
from interp.tasks.audit import audit, lookup_accuracy, majority_accuracy, token_audit

N_CHECK = 1500


def test_all_five_families_registered():
    assert set(TASKS) == {"expression", "code", "boolean", "parity", "relation"}


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_byte_identical_jsonl(task, tmp_path):
    a = write_jsonl(generate(task, 60, seed=7, split="train"), tmp_path / "a.jsonl")
    b = write_jsonl(generate(task, 60, seed=7, split="train"), tmp_path / "b.jsonl")
    c = write_jsonl(generate(task, 60, seed=8, split="train"), tmp_path / "c.jsonl")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    back = read_jsonl(a)
    assert [e.to_json() for e in back] == a.read_text().splitlines()


@pytest.mark.parametrize("task", TASKS)
def test_splits_never_share_an_input(task):
    inputs = {}
    for split in SPLITS:
        texts = set()
        for pattern in (True, False):
            for seed in (0, 1):
                texts |= {e.input for e in generate(task, 150, seed=seed, split=split,
                                                    pattern=pattern)}
        inputs[split] = texts
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not inputs[a] & inputs[b], f"{a} and {b} share inputs"


@pytest.mark.parametrize("task", ["boolean", "parity", "relation"])
@pytest.mark.parametrize("pattern", [True, False])
def test_closed_labels_balanced(task, pattern):
    counts = Counter(e.target for e in generate(task, 200, seed=0, pattern=pattern))
    assert set(counts) == set(generate(task, 1)[0].choices)
    assert max(counts.values()) - min(counts.values()) <= 1


# ---------------------------------------------------------------- independent recomputation

@pytest.mark.parametrize("pattern", [True, False])
def test_expression_targets_recomputed(pattern):
    for ex in generate("expression", N_CHECK, seed=11, split="test", pattern=pattern):
        expr = ex.meta["expression"]
        assert ex.input == expr + "="
        assert checkers.arith(ast.parse(expr, mode="eval")) == int(ex.target)
        s, z, _ = re.match(r"\((.*)\)\+\((.*)\)\*\((.*)\)", expr).groups()
        z_value = checkers.arith(ast.parse(z, mode="eval"))
        assert (z_value == 0) == pattern
        terms = re.findall(r"-?\d+", s)
        assert len(terms) >= 2
        if pattern:   # the answer is S's value, computed, never a copy of one of its terms
            assert checkers.arith(ast.parse(s, mode="eval")) == int(ex.target)
            assert all(t != ex.target for t in terms)


@pytest.mark.parametrize("pattern", [True, False])
def test_code_targets_recomputed_in_subprocess(pattern):
    examples = generate("code", N_CHECK, seed=5, split="train", pattern=pattern)
    outputs = checkers.run_programs([e.meta["source"] for e in examples])
    assert outputs == [e.target for e in examples]
    for ex in examples:
        assert ex.meta["source"] in ex.input
        func2 = ex.meta["source"].split("def function2(z, a):")[1].split("\n")[1]
        assert re.fullmatch(r"    return [za] [+-] \d", func2)     # one surface form
        assert ("a" in func2.replace("return", "")) == (not pattern)
        body = ex.meta["source"].split("def function2")[0]
        assert not re.search(r"math|sin|cos|log|exp|sqrt|import", body)   # executable by hand
    assert len({e.meta["source"] for e in examples}) > 0.9 * len(examples)


@pytest.mark.parametrize("pattern", [True, False])
def test_boolean_targets_and_shortcuts_recomputed(pattern):
    for ex in generate("boolean", N_CHECK, seed=2, pattern=pattern):
        expr = ex.meta["expression"]
        assert str(checkers.boolean(ast.parse(expr, mode="eval"))) == ex.target
        body, op, literal = expr.rsplit(" ", 2)
        assert ex.meta["shortcuts"] == {"last_literal": literal,
                                        "operator": "True" if op == "or" else "False"}
        if pattern:
            assert f"{op} {literal}" == ("or True" if ex.target == "True" else "and False")
        else:   # the control separates the two shortcuts: they disagree on every item
            assert f"{op} {literal}" in ("and True", "or False")
            assert ex.meta["shortcuts"]["last_literal"] != ex.meta["shortcuts"]["operator"]
            assert str(checkers.boolean(ast.parse(body, mode="eval"))) == ex.target


@pytest.mark.parametrize("pattern", [True, False])
def test_parity_targets_recomputed(pattern):
    for ex in generate("parity", N_CHECK, seed=3, pattern=pattern):
        bits, subset = ex.meta["bits"], ex.meta["subset"]
        assert ex.input.split("\n")[0] == "Sequence: " + " ".join(map(str, bits))
        full = "odd" if sum(bits) % 2 else "even"
        shortcut = "odd" if sum(bits[i] for i in subset) % 2 else "even"
        assert ex.target == full
        if pattern:
            assert shortcut == full
    if not pattern:   # control: the outside parity is drawn 50/50, the shortcut right on half
        items = generate("parity", 400, seed=3, pattern=False)
        right = sum(ex.meta["shortcuts"]["subset"] == ex.target for ex in items) / len(items)
        assert 0.4 <= right <= 0.6


@pytest.mark.parametrize("pattern", [True, False])
def test_relation_targets_recomputed(pattern):
    lines = Counter()
    for ex in generate("relation", N_CHECK, seed=4, pattern=pattern):
        edges = ex.meta["edges"]
        for x, y in edges:
            assert f"{x} is connected with {y}" in ex.input
        assert str(checkers.connected(edges)) == ex.target
        z_seen = any("Z" in e for e in edges)
        assert z_seen == (ex.target == "True") if pattern else z_seen
        lines[(ex.target, ex.input.count("\n"))] += 1
    by_label = {label: {n for (t, n) in lines if t == label} for label in ("True", "False")}
    assert by_label["True"] == by_label["False"]   # the line count tells nothing


# ---------------------------------------------------------------- surface cues

@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from interp.models import DEFAULT_MODEL, embedded_dir

    return AutoTokenizer.from_pretrained(embedded_dir(DEFAULT_MODEL))


@pytest.mark.parametrize("task", TASKS)
def test_no_surface_cue_predicts_the_answer(task, tokenizer):
    """Lookup classifiers on token length, line count and the first / last number, fitted on one
    seed's items and scored on another's, do no better than the majority answer (+0.1); the
    declared shortcut solves pattern items and fails control items."""
    rows = audit(task, n=400, tokenizer=tokenizer, tokens=False)
    family = get_task(task)
    for r in rows:
        name = r["feature"]
        if name in ("tokens", "words", "lines", "first_number", "last_number"):
            assert r["excess"] <= 0.1, r
        if name == f"shortcut:{family.primary_shortcut}":
            if r["condition"] == "pattern":
                assert r["accuracy"] >= 0.95, r
            else:
                assert r["accuracy"] <= r["majority"] + 0.1, r
        if name.endswith(":inverted") and r["condition"] == "control":   # NOT(shortcut) too
            assert r["accuracy"] <= r["majority"] + 0.1, r


#: control items a bag of bigrams partly solves by the rule itself: "or True)" decides a
#: group, so local bigrams evaluate sub-expressions (the README reports the figure)
RULE_IN_BIGRAMS = {"boolean"}


@pytest.mark.parametrize("task", TASKS)
def test_bag_of_tokens_cannot_answer_control_items_or_separating_pairs(task):
    rows = token_audit(task, n=400, seed=0)
    kinds = {(r["condition"], r["feature"]) for r in rows}
    assert {("pattern", "bag_of_tokens"), ("control", "bag_of_tokens"),
            ("counterfactual", "clean_vs_corrupt")} <= kinds
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["majority"] > 0
        if r["bar"] is not None and task not in RULE_IN_BIGRAMS:
            assert r["excess"] <= r["bar"], r
    if task == "boolean":   # the declared shortcut's pattern items: the classifier finds it
        assert next(r for r in rows if r["condition"] == "pattern")["accuracy"] >= 0.95


def test_parity_and_relation_controls_resist_position_and_degree_lookups():
    def z_degree(ex):
        return sum(c == "Z" for edge in ex.meta["edges"] for c in edge)

    def z_line(ex):
        return next(i for i, e in enumerate(ex.meta["edges"]) if "Z" in e)

    def outside_parity(ex):
        return sum(b for i, b in enumerate(ex.meta["bits"]) if i not in ex.meta["subset"]) % 2

    for task, features in (("relation", (z_degree, z_line)), ("parity", (outside_parity,))):
        fit = generate(task, 400, seed=0, split="train", pattern=False)
        score = generate(task, 400, seed=1, split="test", pattern=False)
        majority = majority_accuracy(fit, score)
        for feature in features:
            assert lookup_accuracy(fit, score, feature) <= majority + 0.1, (task, feature)


def test_expression_control_is_difficulty_matched():
    def p90(examples):
        values = sorted(abs(int(e.target)) for e in examples)
        return values[int(0.9 * len(values))]
    pattern = generate("expression", 400, seed=0, pattern=True)
    control = generate("expression", 400, seed=0, pattern=False)
    assert p90(control) <= 2 * p90(pattern) and p90(pattern) <= 2 * p90(control)


# ---------------------------------------------------------------- edits

def _recompute(task: str, text: str, meta: dict) -> str:
    """The rule's answer for an edited input, from the text alone."""
    if task == "boolean":
        return str(checkers.boolean(ast.parse(text.split("\n")[0], mode="eval")))
    if task == "parity":
        bits = [int(b) for b in text.split("\n")[0].split()[1:]]
        return "odd" if sum(bits) % 2 else "even"
    if task == "expression":
        return str(checkers.arith(ast.parse(text.rstrip("="), mode="eval")))
    if task == "relation":
        edges = re.findall(r"(\w) is connected with (\w)", text)
        return str(checkers.connected(edges))
    return checkers.run_programs([text[: -len("\nOutput:")]])[0]


def _shortcut(task: str, text: str, meta: dict) -> str:
    """The declared shortcut's answer for an edited input, from the text alone."""
    if task == "boolean":
        return text.split("\n")[0].rsplit(" ", 1)[1]
    if task == "parity":
        bits = [int(b) for b in text.split("\n")[0].split()[1:]]
        return "odd" if sum(bits[i] for i in meta["subset"]) % 2 else "even"
    if task == "expression":
        s = text.split(")+(")[0].lstrip("(")
        return str(checkers.arith(ast.parse(s, mode="eval")))
    if task == "relation":
        return "True" if "Z" in text.split("\nAre")[0] else "False"
    x = int(re.search(r"\nx = (\d)", text).group(1))
    op, k = re.search(r"return [za] ([+-]) (\d)", text).groups()
    return str(x + int(k) if op == "+" else x - int(k))


@pytest.mark.parametrize("task", TASKS)
def test_counterfactual_and_separating_edits(task, tokenizer):
    family = get_task(task)
    rng = random.Random(0)
    agree = disagree = 0
    for ex in generate(task, 60, seed=9, pattern=True):
        edit = family.counterfactual(ex, rng)
        if edit is None:
            continue
        assert edit.target == _recompute(task, edit.input, ex.meta) != ex.target
        # the shortcut and the rule agree on both prompts
        assert _shortcut(task, ex.input, ex.meta) == ex.target
        assert _shortcut(task, edit.input, ex.meta) == edit.target
        agree += 1
    for ex in generate(task, 60, seed=9, pattern=family.separating_on_pattern):
        edit = family.separating(ex, rng)
        if edit is None:
            continue
        assert edit.target == _recompute(task, edit.input, ex.meta) != ex.target
        # the shortcut's answer does not move
        assert _shortcut(task, edit.input, ex.meta) == _shortcut(task, ex.input, ex.meta)
        disagree += 1
    assert agree >= 30 and disagree >= 30


def test_bad_task_and_knobs():
    with pytest.raises(TaskError, match="unknown task"):
        generate("nonsense", 3)
    with pytest.raises(TaskError, match="no knob"):
        generate("expression", 3, bogus=1)
    with pytest.raises(TaskError, match="out of range"):
        generate("expression", 3, z_terms=(5, 1))
    with pytest.raises(TaskError, match="subset"):
        generate("parity", 3, subset=(0, 40))
    with pytest.raises(TaskError, match="unknown split"):
        generate("boolean", 3, split="dev")
    with pytest.raises(TaskError, match="ops"):
        generate("code", 3, ops=("*",))


def test_knobs_change_the_data():
    wide = generate("expression", 50, seed=0, c_terms=2, z_value=1)
    assert all(len(e.meta["c"]) == 2 for e in wide)
    long = generate("parity", 20, seed=0, length=16, subset=(0, 3, 9))
    assert all(len(e.meta["bits"]) == 16 for e in long)
    small = generate("relation", 20, seed=0, cities=4)
    assert all(len(e.meta["edges"]) == 4 for e in small)
