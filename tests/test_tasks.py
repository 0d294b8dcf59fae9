import ast
from collections import Counter

import pytest

import checkers
from interp.errors import TaskError
from interp.tasks import SPLITS, TASKS, generate, read_jsonl, write_jsonl

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


@pytest.mark.parametrize("pattern", [True, False])
def test_expression_targets_recomputed(pattern):
    for ex in generate("expression", N_CHECK, seed=11, split="test", pattern=pattern):
        expr = ex.meta["expression"]
        assert ex.input == expr + "="
        assert checkers.arith(ast.parse(expr, mode="eval")) == int(ex.target)
        z = expr.split(")*(")[0].split(")+(")[1]
        z_value = checkers.arith(ast.parse(z, mode="eval"))
        assert (z_value == 0) == pattern
        if pattern:
            s = expr.split(")+(")[0].lstrip("(")
            assert checkers.arith(ast.parse(s, mode="eval")) == int(ex.target)


@pytest.mark.parametrize("pattern", [True, False])
def test_code_targets_recomputed_in_subprocess(pattern):
    examples = generate("code", N_CHECK, seed=5, split="train", pattern=pattern)
    outputs = checkers.run_programs([e.meta["source"] for e in examples])
    assert outputs == [e.target for e in examples]
    for ex in examples:
        assert ex.meta["source"] in ex.input
        func2 = ex.meta["source"].split("def function2(z, a):")[1].split("\n")[1]
        assert ("a" in func2.replace("return", "")) == (not pattern)
    assert len({e.meta["source"] for e in examples}) > 0.9 * len(examples)


@pytest.mark.parametrize("pattern", [True, False])
def test_boolean_targets_recomputed(pattern):
    for ex in generate("boolean", N_CHECK, seed=2, pattern=pattern):
        expr = ex.meta["expression"]
        assert str(checkers.boolean(ast.parse(expr, mode="eval"))) == ex.target
        body, suffix = expr.rsplit(" ", 2)[0], " ".join(expr.rsplit(" ", 2)[1:])
        if pattern:
            assert suffix == ("or True" if ex.target == "True" else "and False")
        else:
            assert suffix in ("and True", "or False")
            assert str(checkers.boolean(ast.parse(body, mode="eval"))) == ex.target


@pytest.mark.parametrize("pattern", [True, False])
def test_parity_targets_recomputed(pattern):
    for ex in generate("parity", N_CHECK, seed=3, pattern=pattern):
        bits, subset = ex.meta["bits"], ex.meta["subset"]
        assert ex.input.split("\n")[0] == "Sequence: " + " ".join(map(str, bits))
        full = "odd" if sum(bits) % 2 else "even"
        shortcut = "odd" if sum(bits[i] for i in subset) % 2 else "even"
        assert ex.target == full
        assert (shortcut == full) == pattern


@pytest.mark.parametrize("pattern", [True, False])
def test_relation_targets_recomputed(pattern):
    for ex in generate("relation", N_CHECK, seed=4, pattern=pattern):
        edges = ex.meta["edges"]
        for x, y in edges:
            assert f"{x} is connected with {y}" in ex.input
        assert str(checkers.connected(edges)) == ex.target
        z_seen = any("Z" in e for e in edges)
        if pattern:
            assert z_seen == (ex.target == "True")
        else:
            assert z_seen


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


def test_knobs_change_the_data():
    wide = generate("expression", 50, seed=0, value_range=50, c_terms=2)
    assert all(len(e.meta["c"]) == 2 for e in wide)
    assert max(abs(v) for e in wide for v in e.meta["c"]) > 20
    long = generate("parity", 20, seed=0, length=16, subset=(0, 3, 9))
    assert all(len(e.meta["bits"]) == 16 for e in long)
