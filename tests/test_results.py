"""One result contract, one shared test (as peft tests every tuner config with one suite): every
result type has to_frame() (one row per component with a value), save/load round trips, and
top(k) = the k largest absolute values."""

import re

import pandas as pd
import pytest
import torch

from interp.analysis.edges import EdgeScores
from interp.analysis.icl_heads import ICLHeads
from interp.analysis.results import PatchResult
from interp.circuits import ScoreMap
from interp.evaluate import AccuracyRow, EvalResult, Prediction
from interp.shift.schema import ShiftResult

NAME = re.compile(r"^(L\d+H\d+|L\d+MLP|L\d+(RESID|ATTN|MLP|H\d+)@-?\d+|.+->.+|"
                  r"(pattern|control)/\d+-shot/\w+/\w+)$")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _eval_result():
    rows = [AccuracyRow("boolean", c, k, "test", "likelihood", 10, 7 - k, (7 - k) / 10, 0.3,
                        0.9, 0.7, 0.5, 0.5, False) for c in ("pattern", "control") for k in (0, 2)]
    preds = [Prediction("q1", "pattern", 0, "test", "True", "True", "True:0.1", True, True)]
    return EvalResult("tiny", "boolean", 0, [0, 2], rows, preds, {"headline": "best_on_test"})


def _edge_scores():
    L, H, S = 2, 2, 1 + 2 * 2 + 2
    return EdgeScores(torch.randn(L, H, 3, S, 3, generator=_gen()),
                      torch.randn(L, S, 3, generator=_gen(1)),
                      torch.randn(S, 3, generator=_gen(2)), L, H)


def _shift_result():
    maps = {c: {"heads": torch.randn(2, 3, generator=_gen(i)).tolist(),
                "mlp": torch.randn(2, generator=_gen(i + 9)).tolist()}
            for i, c in enumerate(("base-zs", "base-icl", "ft-zs"))}
    return ShiftResult({"maps": maps, "conditions": {}, "shift": {}})


RESULTS = {
    "EvalResult": _eval_result,
    "PatchResult": lambda: PatchResult("heads", "activation", "denoise",
                                       torch.randn(2, 3, 5, generator=_gen()), torch.ones(5),
                                       torch.zeros(5)),
    "PatchResult/resid": lambda: PatchResult("resid", "attribution", "denoise",
                                             torch.randn(2, 4, 5, generator=_gen()),
                                             torch.ones(5), torch.zeros(5), [-4, -3, -2, -1]),
    "ScoreMap": lambda: ScoreMap(torch.randn(3, 4, generator=_gen()),
                                 torch.randn(3, generator=_gen(1))),
    "ScoreMap/heads-only": lambda: ScoreMap(torch.randn(3, 4, generator=_gen())),
    "ICLHeads": lambda: ICLHeads(torch.randn(2, 3, generator=_gen()),
                                 torch.rand(2, 3, 4, generator=_gen(1)),
                                 torch.rand(4, generator=_gen(2)),
                                 torch.rand(4, generator=_gen(3)), torch.randn(2, 3, 5), "boolean",
                                 2, ["d1", "d2"]),
    "EdgeScores": _edge_scores,
    "ShiftResult": _shift_result,
}


@pytest.mark.parametrize("name", RESULTS)
def test_result_contract(name, tmp_path):
    result = RESULTS[name]()
    frame = result.to_frame()
    assert isinstance(frame, pd.DataFrame) and {"component", "value"} <= set(frame.columns)
    assert frame["value"].notna().all()
    keys = frame[["condition", "component"]] if "condition" in frame else frame["component"]
    assert not keys.duplicated().any()                 # one row per component
    assert all(NAME.match(c) for c in frame["component"]), frame["component"].tolist()
    # save / load round trip
    result.save(tmp_path)
    back = type(result).load(tmp_path)
    pd.testing.assert_frame_equal(back.to_frame(), frame)
    # top(k): the k largest |value|, largest first
    top = result.top(3)
    assert len(top) == min(3, len(frame))
    expected = frame["value"].abs().sort_values(ascending=False, kind="stable").head(3)
    assert top["value"].abs().tolist() == pytest.approx(expected.tolist())


def test_score_map_names_follow_the_convention():
    m = ScoreMap(torch.zeros(2, 3), torch.zeros(2))
    assert m.names == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2", "L0MLP", "L1MLP"]
