"""One study cell, stage by stage: seconds, analytic FLOPs and the achieved rate against the
machine's matmul peak measured in the same run. Prints one JSON object per stage, then one for
the whole cell and one per peak measured.

The cell is ``interp study``'s (the study template's seeds, pairs and causal tests) on one
model and task (default SmolLM2 boolean); ``--quick`` takes the shift command's quick sizes
(and its one demonstration set and one fine-tuning seed).
FLOPs are counted at every forward of every decoder layer that runs (fine-tuning copies
included; a layer whose output is resumed from a cache counts nothing): 2 x its weights per
computed token, attention over the cached prefix and the causal part of the new
tokens (4 x layers x heads x head size per query-key position), the unembedding on the rows it
computes; a forward under gradients counts x2 (a backward for activation gradients only: LoRA,
attribution) or x3 (full fine-tuning: weights that take gradients while fine-tuning). The
peak is the best of timed matmuls at the model's shapes (rows x d_model by d_model x d_mlp and
the reverse) in each dtype the cell uses; on a GPU the rate against the bf16 peak is the MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from interp.arch import layers  # noqa: E402
from interp.models import load_model  # noqa: E402
from interp.shift import run as shift_run  # noqa: E402
from interp.shift.config import study_template  # noqa: E402
from interp.shift.stages import Stages  # noqa: E402


class FlopMeter:
    """Analytic FLOPs of every forward of a model family, by the stage that runs it."""

    def __init__(self, model):
        cfg = model.hf.config
        self.d = model.hf.config.hidden_size
        self.attn = model.n_heads * model.d_head
        self.vocab = cfg.vocab_size
        decoder = model.hf.get_decoder()
        self.stage = "setup"
        self.flops: dict[str, float] = {}
        self.dtypes: dict[str, set] = {}
        self.call = (0, 0, 0, 1)        # the decoder call under way: batch, new, prefix, factor
        # plain functions, not bound methods: a fine-tuning copy (deepcopy) keeps counting here
        decoder.register_forward_pre_hook(lambda m, a, k: self._decoder(m, a, k),
                                          with_kwargs=True)
        for layer in layers(model.hf):   # a layer skipped (its output resumed) counts nothing
            weights = sum(p.numel() for n, p in layer.named_parameters()
                          if p.dim() == 2 and "lora" not in n)
            layer.register_forward_pre_hook(lambda m, a, w=weights: self._layer(m, w))
        model.hf.get_output_embeddings().register_forward_pre_hook(
            lambda m, a: self._unembed(m, a))

    def _factor(self, module) -> int:
        """1 without gradients; 3 when fine-tuning weights that take gradients (full
        fine-tuning); else 2 (LoRA, and attribution, whose backward asks for activation
        gradients only even where the weights could take them)."""
        if not torch.is_grad_enabled():
            return 1
        if self.stage != "finetune":
            return 2
        weights = [p for n, p in module.named_parameters() if p.dim() == 2 and "lora" not in n]
        return 3 if any(p.requires_grad for p in weights[:4]) else 2

    def _add(self, flops: float, dtype) -> None:
        self.flops[self.stage] = self.flops.get(self.stage, 0.0) + flops
        self.dtypes.setdefault(self.stage, set()).add(str(dtype).removeprefix("torch."))

    def _decoder(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        x = x if x is not None else kwargs.get("inputs_embeds")
        x = x if x is not None else args[0]
        batch, new = x.shape[:2]
        past = kwargs.get("past_key_values")
        past = past if past is not None else kwargs.get("cache")     # its name from 5.25 on
        prefix = past.get_seq_length() if past is not None and hasattr(
            past, "get_seq_length") else 0
        self.call = (batch, new, prefix, self._factor(module))

    def _layer(self, module, weights: int):
        batch, new, prefix, factor = self.call
        attention = 4 * self.attn * new * (prefix + (new + 1) / 2)
        dtype = next(module.parameters()).dtype
        self._add(batch * (2 * weights * new + attention) * factor, dtype)

    def _unembed(self, module, args):
        rows = args[0].shape[:-1].numel()       # the decoder's factor: x3 when the (tied)
        self._add(2 * rows * self.d * self.vocab * self.call[3], args[0].dtype)   # head trains


def matmul_peak(d: int, d_mlp: int, dtype: torch.dtype, device: str, seconds: float = 2.0
                ) -> float:
    """The best GFLOP/s of ``rows x d @ d x d_mlp`` and ``rows x d_mlp @ d_mlp x d`` over row
    counts 64-1024, each timed for about ``seconds`` / 8."""
    best = 0.0
    for rows in (64, 256, 512, 1024):
        for k, n in ((d, d_mlp), (d_mlp, d)):
            a = torch.randn(rows, k, dtype=dtype, device=device)
            b = torch.randn(k, n, dtype=dtype, device=device)
            a @ b
            reps, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds / 8:
                a @ b
                reps += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = max(best, 2 * rows * k * n * reps / (time.perf_counter() - began) / 1e9)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="boolean")
    p.add_argument("--quick", action="store_true", help="the shift command's quick sizes")
    p.add_argument("--n-pairs", type=int, default=None,
                   help="counterfactual pairs per map (default: the study's)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, device=args.device)
    meter = FlopMeter(model)
    out = args.out or tempfile.mkdtemp(prefix="bench-study-")
    config = replace(study_template(), model=args.model, task=args.task, quick=args.quick,
                     out=out, progress=False, device=args.device)
    if args.quick:                  # the shift command's quick run: one seed of each kind
        config = replace(config, demo_seeds=1, ft_seeds=1)
    if args.n_pairs:
        config = replace(config, n_pairs=args.n_pairs)
    _label_stages(meter)
    began = time.perf_counter()
    results = shift_run.run_shift(config, model)
    total = time.perf_counter() - began
    device = str(model.device)
    d_mlp = getattr(model.hf.config, "intermediate_size", 4 * meter.d)
    dtypes = sorted({d for v in meter.dtypes.values() for d in v})
    peaks = {d: matmul_peak(meter.d, d_mlp, getattr(torch, d), device) for d in dtypes}
    if device.startswith("cuda") and "bfloat16" not in peaks:
        peaks["bfloat16"] = matmul_peak(meter.d, d_mlp, torch.bfloat16, device)
    rows = []
    for stage, seconds in results["timings"].items():
        if stage == "total":
            continue
        flops = meter.flops.get(stage, 0.0)
        dtype = "+".join(sorted(meter.dtypes.get(stage, {"-"})))
        rows.append(_row(stage, seconds, flops, dtype, peaks, device))
    for row in rows:
        print(json.dumps(row))
    cell = _row("cell", total, sum(meter.flops.values()), "+".join(dtypes), peaks, device)
    print(json.dumps({**cell, "model": args.model, "task": args.task, "quick": args.quick,
                      "demo_seeds": config.demo_seeds, "ft_seeds": config.ft_seeds,
                      "n_pairs": config.resolved().n_pairs,
                      "threads": torch.get_num_threads(), "out": out}))
    for dtype, peak in peaks.items():
        print(json.dumps({"peak": dtype, "gflops": round(peak, 1), "device": device}))
    return 0


def _row(stage: str, seconds: float, flops: float, dtype: str, peaks: dict, device: str
         ) -> dict:
    rate = flops / seconds / 1e9 if seconds else 0.0
    peak = max((peaks[d] for d in dtype.split("+") if d in peaks), default=None)
    row = {"stage": stage, "seconds": round(seconds, 2), "flops": flops,
           "gflops": round(rate, 2), "peak_gflops": round(peak, 1) if peak else None,
           "dtype": dtype, "share_of_peak": round(rate / peak, 3) if peak else None}
    if device.startswith("cuda") and peaks.get("bfloat16"):
        row["mfu"] = round(rate / peaks["bfloat16"], 3)
    return row


def _label_stages(meter: FlopMeter) -> None:
    """Count each stage's forwards under its name: the fine-tuning runs under ``finetune``,
    every resumable stage under its own."""
    train = shift_run.train_updates

    def train_updates(*a, **k):
        meter.stage = "finetune"
        return train(*a, **k)
    shift_run.train_updates = train_updates
    for method in ("json", "tensors"):
        original = getattr(Stages, method)

        def labelled(self, name, settings, compute, _original=original):
            def counted():
                meter.stage = name
                return compute()
            return _original(self, name, settings, counted)
        setattr(Stages, method, labelled)


if __name__ == "__main__":
    sys.exit(main())
