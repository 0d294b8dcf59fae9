"""The ICL-versus-GD protocol of Deutch et al. (2024) on any model: ZS, ICL and FT (gd-kv or
lcgd on the same demonstrations) recorded on the same test queries and compared, with the
baselines that expose the metrics' flaws (a random update, an untrained model of the same
config, a model whose only trained parts are the embeddings, norms and unembedding)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from interp.analysis.alignment import Recording, compare, random_update, record
from interp.errors import ConfigError
from interp.finetune import GD_METHODS, train_gd
from interp.models import LoadedModel, load_model, plain_name
from interp.prompts import demo_pool, sample_demos
from interp.tasks import Example, generate, get_task, read_jsonl

METRICS = ("SimAOU", "SimAOU_norm", "SimAM", "SimAM_before", "SimAM_delta", "Rec2FTP",
           "Kendall")


def untrained_copy(model: LoadedModel, seed: int, keep_embeddings: bool = False) -> LoadedModel:
    """A freshly initialised model of the same config; with ``keep_embeddings`` its embeddings,
    norms and unembedding are copied from ``model`` (the "trained embeddings" baseline)."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(model.hf.config, dtype=model.dtype,
                                              attn_implementation="eager")
    if keep_embeddings:
        trained = model.hf.state_dict()
        kept = {k: v for k, v in trained.items()
                if any(part in k for part in ("embed", "norm", "lm_head"))}
        hf.load_state_dict(kept, strict=False)
    hf.to(model.device).eval()
    return LoadedModel(hf=hf, tokenizer=model.tokenizer, spec=model.spec, device=model.device,
                       dtype=model.dtype, source_dir=None)


def _queries(task: str | None, data: str | None, n: int) -> list[Example]:
    if data:
        rows = read_jsonl(data)
        if not rows or not rows[0].choices:
            raise ConfigError(f"{data}: rows need input, target and choices")
        return rows[:n]
    return generate(task, n, seed=0, split="test", pattern=True)


def _demos(task: str | None, data: str | None, k: int, seed: int) -> list[Example]:
    if data:
        pool = read_jsonl(data)
        if k > len(pool):
            raise ConfigError(f"{k} demonstrations asked but {data} holds {len(pool)} rows")
        return sample_demos(pool, k, seed=seed)
    return sample_demos(demo_pool(task, max(256, k), seed=seed), k, seed=seed)


def run_alignment(spec: str, task: str | None = None, demos: int = 32,
                  methods: Sequence[str] = GD_METHODS, seeds: int = 3, n: int = 32,
                  lr: float = 1e-3, baselines: bool = True, data: str | None = None,
                  demo_data: str | None = None, device: str | None = None,
                  progress: bool = True) -> list[dict]:
    """One row per (seed, setting): the metrics of FT-by-``method`` against ICL, and the
    baselines. ``data``/``demo_data``: user JSONL rows (input, target, choices) for the test
    queries and the demonstrations instead of a task family."""
    if task is None and data is None:
        raise ConfigError("give a task or a JSONL file of queries")
    if task is not None:
        family = get_task(task)
        if not family.choices:
            raise ConfigError(f"task {task!r} has open answers; alignment needs a closed answer "
                              "set (boolean, parity, relation, or your own JSONL with choices)")
    bad = [m for m in methods if m not in GD_METHODS]
    if bad:
        raise ConfigError(f"unknown method {', '.join(bad)}; choose from {', '.join(GD_METHODS)}")
    if demos < 1 or seeds < 1 or n < 1:
        raise ConfigError("--demos, --seeds and --n must be positive")
    queries = _queries(task, data, n)
    rows = []
    steps = seeds * demos * (len(methods) + (2 if baselines else 0))
    bar = tqdm(total=steps, desc="align (GD steps)", disable=not progress)
    template = load_model(spec, device=device)   # never bridged: the source of fresh copies
    base = template.copy()
    zs = record(base, queries)                    # zero-shot does not depend on the demos

    def finetuned(model: LoadedModel, start: LoadedModel, shots, method) -> Recording:
        """Train a copy of ``start`` by ``method`` and record it on ``model``'s bridge with the
        trained keys/values swapped in: GD changes nothing else, and a bridge is not rebuilt."""
        trained = start.copy()
        train_gd(trained, shots, method, lr=lr, progress=False)
        bar.update(len(shots))
        with swapped_kv(model, trained):
            return record(model, queries)

    for seed in range(seeds):
        shots = _demos(task, demo_data or data, demos, seed)
        icl = record(base, queries, shots)
        for method in methods:
            ft = finetuned(base, template, shots, method)
            rows.append({"seed": seed, "setting": method, **compare(zs, icl, ft)})
        if not baselines:
            continue
        rows.append({"seed": seed, "setting": "random update",
                     "SimAOU": random_update(zs, icl, seed)})
        for keep in (False, True):
            variant = untrained_copy(template, seed, keep_embeddings=keep)
            start = variant.copy()
            v_zs, v_icl = record(variant, queries), record(variant, queries, shots)
            ft = finetuned(variant, start, shots, methods[0])
            name = f"{'embeddings-only' if keep else 'untrained'} ({methods[0]})"
            rows.append({"seed": seed, "setting": name, **compare(v_zs, v_icl, ft)})
            del variant, start
    bar.close()
    return rows


@contextmanager
def swapped_kv(model: LoadedModel, source: LoadedModel):
    """Temporarily give ``model`` (bridged or not) the key/value weights of ``source``."""
    from interp.finetune.layer_causal import kv_parameters

    target = kv_parameters(model.hf)
    weights = kv_parameters(source.hf)
    if [plain_name(n) for n, _ in target] != [plain_name(n) for n, _ in weights]:
        raise ConfigError("the two models' key/value parameters do not match")
    saved = [p.detach().clone() for _, p in target]
    with torch.no_grad():
        for (_, p), (_, w) in zip(target, weights):
            p.copy_(w)
    try:
        yield model
    finally:
        with torch.no_grad():
            for (_, p), old in zip(target, saved):
                p.copy_(old)


def summarize(rows: list[dict]):
    """Mean and std over seeds per setting and metric, as a DataFrame."""
    import pandas as pd

    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "per_layer"} for r in rows])
    cols = [m for m in METRICS if m in frame]
    grouped = frame.groupby("setting", sort=False)[cols]
    mean, std = grouped.mean(), grouped.std(ddof=0)
    return mean, std


def write_results(rows: list[dict], out: str | Path, meta: dict) -> Path:
    from interp.plots import write_page

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mean, std = summarize(rows)
    table = mean.round(4).astype(str) + " ± " + std.round(4).astype(str)
    table.to_csv(out / "alignment.csv")
    (out / "alignment.json").write_text(json.dumps(
        {**meta, "rows": rows, "mean": mean.to_dict(), "std": std.to_dict()}, indent=2,
        default=lambda v: None if isinstance(v, float) and v != v else v))
    write_page(out / "alignment.html", f"ICL vs GD alignment: {meta.get('model')}",
               layer_figures(rows))
    return out


def layer_figures(rows: list[dict]) -> list:
    import plotly.graph_objects as go

    figures = []
    for metric in ("SimAOU", "SimAOU_norm", "SimAM", "SimAM_delta"):
        fig = go.Figure()
        settings = dict.fromkeys(r["setting"] for r in rows if "per_layer" in r)
        for setting in settings:
            curves = torch.tensor([r["per_layer"][metric] for r in rows
                                   if r["setting"] == setting and "per_layer" in r])
            mean = curves.nanmean(0)
            fig.add_trace(go.Scatter(y=mean.tolist(), mode="lines+markers", name=setting))
        fig.update_layout(title=f"{metric} per layer (mean over seeds)", xaxis_title="layer",
                          yaxis_title=metric, height=380)
        figures.append(fig)
    return figures
