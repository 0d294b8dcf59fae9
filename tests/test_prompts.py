from collections import Counter

import pytest

from interp.errors import TaskError
from interp.prompts import build_prompt, demo_pool, sample_demos
from interp.tasks import generate, get_task


def test_demos_seeded_balanced_and_bounded():
    pool = demo_pool("boolean", 64, seed=0)
    assert all(e.pattern for e in pool)
    a, b = sample_demos(pool, 8, seed=1), sample_demos(pool, 8, seed=1)
    assert [e.id for e in a] == [e.id for e in b]
    assert [e.id for e in a] != [e.id for e in sample_demos(pool, 8, seed=2)]
    assert Counter(e.target for e in a) == {"True": 4, "False": 4}
    with pytest.raises(TaskError, match="pool holds only 64"):
        sample_demos(pool, 65)


def test_prompt_layout_and_same_query_in_every_condition():
    query = generate("expression", 1, seed=0)[0]
    demos = sample_demos(demo_pool("expression", 16), 3)
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
