"""Examples/s of ICL evaluation at 16 shots: naive path (demonstrations recomputed per query)
versus the cached path (their KV cache computed once). Prints one JSON object per task."""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from interp.evaluate import predict  # noqa: E402
from interp.models import load_model  # noqa: E402
from interp.prompts import choose_demos  # noqa: E402
from interp.tasks import generate  # noqa: E402


def bench(model, task: str, shots: int, n: int, batch_size: int) -> dict:
    demos = choose_demos(task, shots)
    queries = generate(task, n, seed=0)
    timings, outputs = {}, {}
    for name, use_cache in (("naive", False), ("cached", True)):
        start = time.perf_counter()
        outputs[name] = predict(model, queries, demos, batch_size=batch_size, use_cache=use_cache)
        timings[name] = time.perf_counter() - start
    same = [a[0] for a in outputs["naive"]] == [b[0] for b in outputs["cached"]]
    return {"bench": "eval", "model": model.spec, "task": task, "shots": shots, "n": n,
            "batch_size": batch_size,
            "naive_examples_per_s": round(n / timings["naive"], 3),
            "cached_examples_per_s": round(n / timings["cached"], 3),
            "speedup": round(timings["naive"] / timings["cached"], 2),
            "identical_predictions": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default="expression,boolean")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    model = load_model(args.model)
    for task in args.tasks.split(","):
        print(json.dumps(bench(model, task, args.shots, args.n, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
