import json
import math

import pytest
import torch

from interp.engine import choice_logprobs, encode, greedy_generate
from interp.evaluate import EvalResult, baselines, evaluate, parse_answer
from interp.prompts import build_prompt, choose_demos
from interp.stats import mcnemar, wilson
from interp.tasks import generate


def test_wilson_matches_hand_computation():
    # k=8, n=10: p=.8, z=1.96 -> centre=(.8+.19208)/1.38416, half=1.96*sqrt(.016+.009604)/1.38416
    lo, hi = wilson(8, 10)
    centre, half = (0.8 + 0.19208) / 1.38416, 1.96 * math.sqrt(0.016 + 0.009604) / 1.38416
    assert lo == pytest.approx(centre - half, abs=1e-6)
    assert hi == pytest.approx(centre + half, abs=1e-6)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(10, 10)[1] == pytest.approx(1.0)


@pytest.mark.parametrize("raw,parsed", [(" 42\n", "42"), ("-7*3", "-7"), (" True", "True"),
                                        ("\n\n12 is it", "12"), ("", "")])
def test_parse_answer(raw, parsed):
    assert parse_answer(raw) == parsed


def _manual_choice_logprob(model, prefix, query, choice):
    ids = encode(model.tokenizer, prefix, True) + encode(model.tokenizer, query, not prefix)
    cid = encode(model.tokenizer, " " + choice, False)
    with torch.no_grad():
        logp = torch.log_softmax(model.hf(torch.tensor([ids + cid])).logits[0], -1)
    return sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(cid))


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_padded_scores_equal_single_unpadded_forward(tiny, use_cache):
    queries = generate("relation", 5, seed=1)  # different lengths -> padding in the batch
    demos = choose_demos("relation", 2)
    prefix = build_prompt(queries[0], demos).prefix
    texts = [q.input for q in queries]
    scores = choice_logprobs(tiny, prefix, texts, ["False", "True"], batch_size=4,
                             use_cache=use_cache)
    for i, q in enumerate(texts):
        for j, c in enumerate(["False", "True"]):
            assert scores[i, j].item() == pytest.approx(
                _manual_choice_logprob(tiny, prefix, q, c), abs=1e-4)


def test_cached_and_naive_generation_identical(smol):
    queries = [q.input for q in generate("expression", 6, seed=0)]
    demos = choose_demos("expression", 16)
    prefix = build_prompt(generate("expression", 1)[0], demos).prefix
    cached = greedy_generate(smol, prefix, queries, 4, batch_size=3, use_cache=True)
    naive = greedy_generate(smol, prefix, queries, 4, batch_size=3, use_cache=False)
    single = greedy_generate(smol, prefix, queries[:1], 4, batch_size=1, use_cache=False)
    assert cached == naive
    assert single[0] == naive[0]


def test_generation_matches_hf_generate(smol):
    prompt = "The capital of France is"
    ours = greedy_generate(smol, "", [prompt], 3)
    ids = smol.tokenizer(prompt, return_tensors="pt").input_ids
    ref = smol.hf.generate(ids, max_new_tokens=3, do_sample=False)
    assert ours[0] == smol.tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)


def test_icl_lifts_boolean_pattern_accuracy_on_embedded_model(smol, tmp_path):
    result = evaluate(smol, "boolean", shots=[0, 2, 4], n=24, progress=False, n_validation=8)
    frame = result.to_frame()
    assert set(frame.condition) == {"pattern", "control"}
    assert set(frame.split) == {"test", "validation"}
    icl = result.accuracy("pattern", 4)
    assert icl >= 0.75, frame
    row = frame[(frame.condition == "pattern") & (frame.shots == 4) & (frame.split == "test")]
    assert row.ci_low.item() <= icl <= row.ci_high.item()
    assert (frame.chance == 0.5).all() and (frame.majority == 0.5).all()
    assert result.selection["headline"] == "chosen_on_validation"
    assert len(result.predictions) == 2 * 3 * 24 + 2 * 3 * 8
    # nested demonstrations: the 2-shot set is the start of the 4-shot set
    assert result.demo_ids["2"] == result.demo_ids["4"][:2]
    # k-shot vs zero-shot on the same queries: the McNemar counts are the discordant queries
    test = next(t for t in result.paired if (t["condition"], t["shots"]) == ("pattern", 4))
    right = {s: {p.id: p.correct for p in result.predictions
                 if (p.condition, p.shots, p.split) == ("pattern", s, "test")} for s in (0, 4)}
    assert test["only_a"] == sum(right[4][i] and not right[0][i] for i in right[0])
    assert test["only_b"] == sum(right[0][i] and not right[4][i] for i in right[0])
    result.save(tmp_path)
    back = EvalResult.load(tmp_path, "boolean")
    assert back.to_frame().equals(result.to_frame()) and len(back.predictions) == len(
        result.predictions)
    # the one result contract: the stem found when not told, and the largest accuracies first
    assert EvalResult.load(tmp_path).to_dict() == result.to_dict()
    assert back.top(1)["value"].item() == max(r.accuracy for r in result.rows)
    assert json.loads((tmp_path / "eval_boolean.json").read_text())["type"] == "EvalResult"


def test_open_answer_scores_exact_and_lenient(tiny):
    result = evaluate(tiny, "expression", shots=[0], n=4, progress=False)
    for p in result.predictions:
        assert p.correct == (p.prediction == p.target)
        assert p.lenient == (p.correct or p.target in p.raw)


def test_generation_scoring_reports_answers_outside_the_answer_set(tiny):
    result = evaluate(tiny, "boolean", shots=[0], n=6, progress=False,
                      scoring=["likelihood", "generation"])
    gen = [r for r in result.rows if r.scoring == "generation"]
    like = [r for r in result.rows if r.scoring == "likelihood"]
    assert gen and like and all(r.outside_answer_set is not None for r in gen)
    assert all(r.outside_answer_set is None for r in like)
    # a random model rarely says True/False: most generated answers fall outside the set
    assert max(r.outside_answer_set for r in gen) > 0.5


def test_baselines_and_below_chance_flag():
    queries = generate("expression", 40, seed=0)
    chance, majority = baselines(queries)
    counts = {}
    for q in queries:
        counts[q.target] = counts.get(q.target, 0) + 1
    assert majority == max(counts.values()) / 40
    assert chance == pytest.approx(sum((c / 40) ** 2 for c in counts.values()))
    assert baselines(generate("parity", 10, seed=0)) == (0.5, 0.5)


def test_mcnemar_exact_hand_values():
    # discordant 1 vs 5: p = 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * 7/64
    a = [True] * 5 + [False] + [True] * 4
    b = [False] * 5 + [True] + [True] * 4
    test = mcnemar(a, b)
    assert (test["only_a"], test["only_b"]) == (5, 1)
    assert test["p_value"] == pytest.approx(14 / 64)
    assert mcnemar(a, a)["p_value"] == 1.0
