"""Attribution maps at reduced matmul precision beside the float32 reference, on the embedded
model: per condition (base-zs, base-icl at 4 shots) the map's Pearson, Spearman and heads-only
Pearson correlation with the float32 ("highest") map, the gap's difference in units of its
interval's half-width, base-icl's shift from base-zs in units of its bootstrap half-width, and
the seconds of each. Prints one JSON object per precision and condition, then a verdict line:
whether the mode meets the bar for becoming a stage's CPU default (every map >= 0.99 on the
three correlations, every gap and shift within 0.1 of its half-width) and whether this CPU has
native bf16 (AMX or AVX-512 BF16).

``medium`` lets oneDNN compute float32 matmuls with bf16 inputs (float32 accumulation); logits,
logit differences and the attribution products stay float32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from interp.models import load_model  # noqa: E402
from interp.shift.conditions import build_conditions, build_pairs  # noqa: E402
from interp.shift.config import ShiftConfig  # noqa: E402
from interp.shift.contrasts import map_distance  # noqa: E402
from interp.shift.gaps import shift_se  # noqa: E402
from interp.shift.measure import ConditionRunner, flatten, pair_scores  # noqa: E402
from interp.stats import mean_ci  # noqa: E402

BAR_CORRELATION, BAR_HALF_WIDTH = 0.99, 0.1


def native_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def measure(runner, conds, pairs, precision: str) -> tuple[dict, dict]:
    torch.set_float32_matmul_precision(precision)
    try:
        out, seconds = {}, {}
        for name, cond in conds.items():
            began = time.perf_counter()
            out[name] = pair_scores(runner, cond, pairs)
            seconds[name] = time.perf_counter() - began
        return out, seconds
    finally:
        torch.set_float32_matmul_precision("highest")


def compare(ref: dict, other: dict, n_heads: int, n_boot: int) -> dict:
    a, b = flatten(ref).mean(-1), flatten(other).mean(-1)
    gap_ref, gap = ref["clean"] - ref["corrupt"], other["clean"] - other["corrupt"]
    ci = mean_ci(gap_ref.double(), n_boot=n_boot)["ci95"]
    half = (ci[1] - ci[0]) / 2
    return {"pearson": float(torch.corrcoef(torch.stack([a, b]))[0, 1]),
            "spearman": float(spearmanr(a.numpy(), b.numpy())[0]),
            "heads_pearson": float(torch.corrcoef(torch.stack([a[:n_heads], b[:n_heads]]))[0, 1]),
            "gap_difference_in_half_widths": float((gap.mean() - gap_ref.mean()).abs()) / half}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="boolean")
    p.add_argument("--n-pairs", type=int, default=16)
    p.add_argument("--precisions", default="medium", help="comma list besides 'highest'")
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, device="cpu")
    config = ShiftConfig(model=args.model, task=args.task, n_pairs=args.n_pairs, progress=False)
    conds = {c.name: c for c in build_conditions(config, model.tokenizer)
             if c.name in ("base-zs", "base-icl")}
    pairs = build_pairs(config, model.tokenizer, args.n_pairs)
    runner = ConditionRunner(model, {}, config.task)
    model.bridge  # noqa: B018
    n_heads = model.n_layers * model.n_heads
    measure(runner, {"base-zs": conds["base-zs"]}, pairs.subset(range(2)), "highest")  # warm
    ref, ref_s = measure(runner, conds, pairs, "highest")
    ref_shift = map_distance(flatten(ref["base-icl"]), flatten(ref["base-zs"]))[0]
    shift_half = 1.96 * (shift_se(flatten(ref["base-zs"]), flatten(ref["base-icl"]), 200, 0)
                         or float("nan"))
    for precision in args.precisions.split(","):
        other, secs = measure(runner, conds, pairs, precision)
        shift = map_distance(flatten(other["base-icl"]), flatten(other["base-zs"]))[0]
        shift_units = abs(shift - ref_shift) / shift_half
        ok = shift_units <= BAR_HALF_WIDTH
        for name in conds:
            row = compare(ref[name], other[name], n_heads, 500)
            ok &= min(row["pearson"], row["spearman"], row["heads_pearson"]) >= BAR_CORRELATION
            ok &= row["gap_difference_in_half_widths"] <= BAR_HALF_WIDTH
            print(json.dumps({"precision": precision, "condition": name, **{
                k: round(v, 5) for k, v in row.items()}, "seconds": round(secs[name], 2),
                "seconds_float32": round(ref_s[name], 2),
                "speedup": round(ref_s[name] / secs[name], 2)}))
        print(json.dumps({"precision": precision, "shift_base_icl": round(shift, 5),
                          "shift_float32": round(ref_shift, 5),
                          "shift_difference_in_half_widths": round(shift_units, 4)}))
        print(json.dumps({"precision": precision, "meets_bar": bool(ok),
                          "native_bf16": native_bf16(), "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
