from collections import Counter
from dataclasses import replace

import pytest

from interp.errors import TaskError
from interp.prompts import build_prompt, choose_demos, relabel
from interp.tasks import generate, get_task


def test_demos_seeded_balanced_nested_and_bounded():
    a, b = choose_demos("boolean", 8, seed=1), choose_demos("boolean", 8, seed=1)
    assert all(e.pattern for e in a)
    assert [e.id for e in a] == [e.id for e in b]
    assert [e.id for e in a] != [e.id for e in choose_demos("boolean", 8, seed=2)]
    assert Counter(e.target for e in a) == {"True": 4, "False": 4}
    for k in (1, 2, 4):   # shot counts draw nested sets, each as balanced as it can be
        small = choose_demos("boolean", k, seed=1)
        assert [e.id for e in small] == [e.id for e in a[:k]]
        counts = Counter(e.target for e in small)
        assert max(counts.values()) - min(counts.values(), default=0) <= 1
    with pytest.raises(TaskError, match="pool holds only 64"):
        choose_demos("boolean", 65, pool_size=64)
    with pytest.raises(TaskError, match="non-negative"):
        choose_demos("boolean", -1)


@pytest.mark.parametrize("task", ["boolean", "parity", "relation", "code"])
def test_relabel_keeps_label_counts_with_exactly_half_wrong(task):
    for k in (4, 8, 12):
        for seed in range(6):
            demos = choose_demos(task, k, seed=seed)
            wrong, agreement = relabel(demos, seed=seed)
            assert [d.input for d in wrong] == [d.input for d in demos]
            if demos[0].choices:   # closed answers: the counts stay, exactly half wrong
                assert Counter(d.target for d in wrong) == Counter(d.target for d in demos)
                assert sum(w.target != d.target for w, d in zip(wrong, demos)) == k // 2
                assert agreement == 0.5


def test_relabel_below_a_multiple_of_four_flips_fewer_and_says_so():
    demos = choose_demos("boolean", 6, seed=3)
    wrong, agreement = relabel(demos, seed=3)
    assert Counter(d.target for d in wrong) == Counter(d.target for d in demos)
    assert sum(w.target != d.target for w, d in zip(wrong, demos)) == 2
    assert agreement == pytest.approx(4 / 6)
    unbalanced = [replace(d, target="True") for d in demos[:5]] + demos[5:6]
    wrong, _ = relabel(unbalanced, seed=0, wrong=4)    # one False: only one pair can swap
    assert Counter(d.target for d in wrong) == Counter(d.target for d in unbalanced)
    numbers, _ = relabel(choose_demos("expression", 6, seed=0), seed=1)
    assert sum(w.target != d.target for w, d in
               zip(numbers, choose_demos("expression", 6, seed=0))) == 3


def test_prompt_layout_and_same_query_in_every_condition():
    query = generate("expression", 1, seed=0)[0]
    demos = choose_demos("expression", 3)
    zero, icl = build_prompt(query, []), build_prompt(query, demos)
    assert zero.query == icl.query == query.input
    assert zero.prefix == get_task("expression").header + "\n\n"
    for d in demos:  # expression answers follow "=" directly
        assert d.input + d.target in icl.prefix
    assert icl.text.endswith(query.input)
    assert build_prompt(query, [], header=False).prefix == ""
    assert build_prompt(query, [], header="Solve:").prefix == "Solve:\n\n"


def test_chat_template_wraps_prefix_and_query(smol):
    query = generate("boolean", 1)[0]
    p = build_prompt(query, [], tokenizer=smol.tokenizer, chat=True)
    assert p.prefix.startswith("<|im_start|>")
    assert query.input in p.query and p.query.rstrip().endswith("assistant")
