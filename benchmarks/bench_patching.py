"""Head-sweep patching on the embedded model: TransformerLens's per-component function vs our
batched activation patching vs our attribution patching (and TransformerLens's own
attribution_patch), for one prompt pair and a batch of 16 pairs. Prints one JSON object per case.

TransformerLens's sweep runs one identical-cost forward per head; on the 16-pair batch it is
timed on ``--tl-heads`` heads (default: the first 3 layers) and scaled to all heads unless
``--full-tl`` is given (about 12 minutes on 2 CPU cores). Its values on those heads are checked
against ours either way. ``*_gflops``: the achieved rate, analytic FLOPs (as
``bench_study.py`` counts them: every decoder layer that runs) over the measured seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from bench_study import FlopMeter  # noqa: E402
from peak import Peak  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from transformer_lens import patching as tlp  # noqa: E402

from interp.analysis.attribution import attribution_patch  # noqa: E402
from interp.analysis.metrics import logit_diff  # noqa: E402
from interp.analysis.pairs import task_pairs, tokenize_pairs  # noqa: E402
from interp.analysis.patching import activation_patch  # noqa: E402
from interp.models import load_model  # noqa: E402


def choose_pairs(model, n: int, seed: int):
    """n boolean pairs of one token length (TransformerLens's sweep takes one tensor)."""
    tokens = tokenize_pairs(model, task_pairs("boolean", 8 * n, seed=seed, header=False,
                                              tokenizer=model.tokenizer))
    length = collections.Counter(t["clean"].shape[0] for t in tokens).most_common(1)[0][0]
    chosen = [t for t in tokens if t["clean"].shape[0] == length][:n]
    clean = torch.stack([t["clean"] for t in chosen]).to(model.device)
    corrupt = torch.stack([t["corrupt"] for t in chosen]).to(model.device)
    answers, foils = [t["answer_id"] for t in chosen], [t["foil_id"] for t in chosen]
    return clean, corrupt, logit_diff(answers, foils), answers, foils


def tl_attribution_heads(model, clean, corrupt, answers, foils):
    """transformer_lens.tools.analysis.attribution_patch per pair (its metric sees one example),
    summed over positions, averaged over pairs: ``[layer, head]``."""
    from transformer_lens.tools.analysis import attribution_patch as tl_attr

    heads = torch.zeros(model.n_layers, model.n_heads)
    for b in range(clean.shape[0]):
        metric = logit_diff(answers[b: b + 1], foils[b: b + 1])
        result = tl_attr(model.bridge, clean[b: b + 1], corrupt[b: b + 1],
                         lambda logits: metric(logits)[0])
        for node, value in result.node_scores.items():
            if node.kind == "attn_head_out":
                heads[node.layer, node.head] += value / clean.shape[0]
    return heads


def worker(args) -> None:
    """One measurement in a fresh process, so its peak memory is its own."""
    torch.manual_seed(0)
    model = load_model(args.model, device=args.device)
    meter = FlopMeter(model)
    clean, corrupt, metric, answers, foils = choose_pairs(model, args.n, args.seed)
    L, H = model.n_layers, model.n_heads
    with torch.no_grad():
        _, clean_cache = model.bridge.run_with_cache(clean)
        baseline = metric(model.bridge(corrupt)).mean()
    meter.stage = "measured"
    with Peak(model.device) as peak:
        if args.worker == "tl":
            index = pd.DataFrame([(l, h) for l in range(L) for h in range(H)][:args.tl_heads],
                                 columns=["layer", "head_index"])
            with torch.no_grad():
                values = tlp.get_act_patch_attn_head_out_all_pos(
                    model.bridge, corrupt, clean_cache, lambda logits: metric(logits).mean(),
                    index_df=index, index_axis_names=None)
            values = torch.as_tensor(values).flatten().cpu()
        elif args.worker == "ours":
            values = activation_patch(model, clean, corrupt, metric, "heads").mean(-1)
        elif args.worker == "attribution":
            values = attribution_patch(model, clean, corrupt, metric, "heads").mean(-1)
        else:
            values = tl_attribution_heads(model, clean, corrupt, answers, foils)
    torch.save({"values": values.cpu(), "seconds": peak.seconds, "mib": peak.mib,
                "flops": meter.flops.get("measured", 0.0),
                "baseline": baseline.cpu(), "tokens": clean.shape[1]}, args.save)


def measure(args, name: str, n: int, tl_heads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.pt")
        cmd = [sys.executable, __file__, "--worker", name, "--n", str(n), "--save", path,
               "--model", args.model, "--seed", str(args.seed), "--tl-heads", str(tl_heads)]
        if args.device:
            cmd += ["--device", args.device]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return torch.load(path, weights_only=True)


def bench_case(args, model, n_pairs: int, tl_heads: int) -> dict:
    L, H = model.n_layers, model.n_heads
    r = {name: measure(args, name, n_pairs, tl_heads)
         for name in ("ours", "attribution", "tl", "tl_attribution")}
    tl_seconds = r["tl"]["seconds"] * (L * H) / tl_heads
    ours, attr = r["ours"]["values"], r["attribution"]["values"]
    effect = (ours - r["ours"]["baseline"]).flatten()
    return {
        "bench": "patching", "model": model.spec, "device": str(model.device),
        "pairs": n_pairs, "tokens_per_prompt": int(r["ours"]["tokens"]), "components": L * H,
        "tl_heads_timed": tl_heads, "tl_seconds": round(tl_seconds, 2),
        "tl_seconds_extrapolated": tl_heads < L * H, "tl_peak_mib": r["tl"]["mib"],
        "ours_seconds": round(r["ours"]["seconds"], 2), "ours_peak_mib": r["ours"]["mib"],
        "attribution_seconds": round(r["attribution"]["seconds"], 2),
        "attribution_peak_mib": r["attribution"]["mib"],
        "tl_attribution_seconds": round(r["tl_attribution"]["seconds"], 2),
        "tl_attribution_peak_mib": r["tl_attribution"]["mib"],
        **{f"{name}_gflops": round(r[name]["flops"] / r[name]["seconds"] / 1e9, 1)
           for name in ("ours", "attribution", "tl")},
        "speedup_activation_vs_tl": round(tl_seconds / r["ours"]["seconds"], 1),
        "speedup_attribution_vs_tl": round(tl_seconds / r["attribution"]["seconds"], 1),
        "speedup_attribution_vs_tl_attribution": round(
            r["tl_attribution"]["seconds"] / r["attribution"]["seconds"], 1),
        "max_abs_diff_vs_tl": float((ours.flatten()[:tl_heads] - r["tl"]["values"]).abs().max()),
        "max_abs_diff_attribution_vs_tl_attribution": float(
            (attr - r["tl_attribution"]["values"]).abs().max()),
        "spearman_attribution_vs_activation": round(float(
            spearmanr(effect.numpy(), attr.flatten().numpy()).statistic), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None)
    p.add_argument("--pairs", default="1,16", help="comma list of batch sizes")
    p.add_argument("--tl-heads", type=int, default=None,
                   help="heads TransformerLens's sweep is timed on for batches > 1 "
                        "(default: 3 layers' worth)")
    p.add_argument("--full-tl", action="store_true", help="time TransformerLens on every head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    model = load_model(args.model, device=args.device)
    all_heads = model.n_layers * model.n_heads
    for n in (int(v) for v in args.pairs.split(",")):
        limit = all_heads if (args.full_tl or n == 1) else (args.tl_heads or 3 * model.n_heads)
        print(json.dumps(bench_case(args, model, n, min(limit, all_heads))), flush=True)


if __name__ == "__main__":
    main()
