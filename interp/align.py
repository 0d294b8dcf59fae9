"""The ICL-versus-GD protocol of Deutch et al. (2024) on any model: ZS, ICL and FT (gd-kv or
lcgd on the same demonstrations) recorded on the same test queries and compared, with the
baselines that expose the metrics' flaws (a random update, an untrained model of the same
config, a model whose only trained parts are the embeddings, norms and unembedding).

Training and recording run in float32 whatever the device (plain SGD on bf16 weights rounds
small updates away, and more often for gd-kv's smaller gradients than for lcgd's). With several
learning rates, each method's rate is chosen on validation queries (the FT model's zero-shot
accuracy, ties to the smaller rate) before the test queries are recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from interp.analysis.alignment import compare, random_update, record
from interp.arch import kv_parameters, plain_name
from interp.budget import Need, check, forward_seconds
from interp.errors import ConfigError
from interp.finetune import GD_METHODS, train_gd
from interp.models import LoadedModel, load_model
from interp.prompts import choose_demos
from interp.tasks import Example, generate, get_task, read_jsonl

METRICS = ("SimAOU", "SimAOU_norm", "SimAM", "SimAM_before", "SimAM_delta", "Rec2FTP",
           "Kendall", "Kendall_random")


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


def _queries(task: str | None, data: str | None, n: int, split: str = "test") -> list[Example]:
    if data:
        rows = read_jsonl(data)
        if not rows or not rows[0].choices:
            raise ConfigError(f"{data}: rows need input, target and choices")
        return rows[:n] if split == "test" else rows[n: 2 * n]
    return generate(task, n, seed=0, split=split, pattern=True)


def _demos(task: str | None, data: str | None, k: int, seed: int) -> list[Example]:
    if data:
        pool = read_jsonl(data)
        return choose_demos(pool[0].task, k, seed=seed, pool=pool)
    return choose_demos(task, k, seed=seed, pool_size=max(256, k))


def choose_lr(template: LoadedModel, demos, method: str, lrs: Sequence[float],
              validation: Sequence[Example]) -> tuple[float, dict]:
    """The rate whose fine-tuned model answers the most validation queries right (ties: the
    smaller rate), and every rate's validation accuracy."""
    scores = {}
    for lr in sorted(lrs):
        trained = template.copy()
        try:
            train_gd(trained, demos, method, lr=lr, progress=False)
        except ConfigError:       # the rate is too small to change the weights, or diverges
            scores[lr] = float("nan")
            continue
        scores[lr] = float(record(trained, validation).correct.float().mean())
    finite = {lr: s for lr, s in scores.items() if s == s}
    if not finite:
        raise ConfigError(f"no learning rate in {list(lrs)} gives a usable {method} update")
    best = max(finite.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return best, scores


def _check_settings(task, data, methods, demos: int, seeds: int, n: int, lr) -> list[float]:
    """Every setting of :func:`run_alignment` checked; the learning rates as a list."""
    if task is None and data is None:
        raise ConfigError("give a task or a JSONL file of queries")
    if task is not None and not get_task(task).choices:
        raise ConfigError(f"task {task!r} has open answers; alignment needs a closed answer "
                          "set (boolean, parity, relation, or your own JSONL with choices)")
    bad = [m for m in methods if m not in GD_METHODS]
    if bad:
        raise ConfigError(f"unknown method {', '.join(bad)}; choose from {', '.join(GD_METHODS)}")
    if demos < 1 or seeds < 1 or n < 1:
        raise ConfigError("--demos, --seeds and --n must be positive")
    lrs = [lr] if isinstance(lr, (int, float)) else list(lr)
    if not lrs or any(not (x > 0) for x in lrs):
        raise ConfigError(f"learning rates must be positive, got {lrs}")
    return lrs


def _need(model: LoadedModel, demos: int, settings: int, seeds: int, n: int, n_lrs: int) -> Need:
    """A lower bound on an alignment run's time: every GD step (a forward and a backward over
    one demonstration, at least 16 tokens) and every recording of the queries after all the
    demonstrations, per seed, setting and learning rate tried."""
    runs = seeds * settings + (n_lrs if n_lrs > 1 else 0)
    gd = forward_seconds(model, runs * demos * 16, forwards=runs * demos, passes=3)
    record = forward_seconds(model, runs * 3 * n * demos * 16, forwards=runs * 3 * n)
    return Need(f"alignment over {seeds:,} seeds of {demos:,} demonstrations and {n:,} queries",
                seconds=gd + record)


def run_alignment(spec: str, task: str | None = None, demos: int = 32,
                  methods: Sequence[str] = GD_METHODS, seeds: int = 3, n: int = 32,
                  lr: float | Sequence[float] = 1e-3, baselines: bool = True,
                  data: str | None = None, demo_data: str | None = None,
                  device: str | None = None, progress: bool = True) -> dict:
    """Rows per (seed, setting): the metrics of FT-by-``method`` against ICL, and the baselines;
    and the learning rates used (chosen on validation when several are given)."""
    lrs = _check_settings(task, data, methods, demos, seeds, n, lr)
    queries = _queries(task, data, n)
    template = load_model(spec, device=device, dtype="float32")   # never bridged: copies
    check(_need(template, demos, len(methods) + (2 if baselines else 0), seeds, n, len(lrs)))
    chosen, sweep = {}, {}
    for method in methods:
        if len(lrs) == 1:
            chosen[method] = lrs[0]
        else:
            chosen[method], sweep[method] = choose_lr(
                template, _demos(task, demo_data or data, demos, 0), method, lrs,
                _queries(task, data, n, split="validation"))
    rows = []
    steps = seeds * demos * (len(methods) + (2 if baselines else 0))
    bar = tqdm(total=steps, desc="align (GD steps)", disable=not progress)
    base = template.copy()
    zs = record(base, queries)                    # zero-shot does not depend on the demos

    def finetuned(model: LoadedModel, start: LoadedModel, shots, method) -> tuple:
        """Train a copy of ``start`` by ``method`` and record it on ``model`` with the trained
        keys/values swapped in: GD changes nothing else, and a bridge is not rebuilt."""
        trained = start.copy()
        summary = train_gd(trained, shots, method, lr=chosen[method], progress=False,
                           record_queries=True)
        bar.update(len(shots))
        with swapped_kv(model, trained):
            return record(model, queries), summary["queries"]

    for seed in range(seeds):
        shots = _demos(task, demo_data or data, demos, seed)
        icl = record(base, queries, shots)
        for method in methods:
            ft, ft_q = finetuned(base, template, shots, method)
            rows.append({"seed": seed, "setting": method, "lr": chosen[method],
                         **compare(zs, icl, ft, ft_q, seed)})
        if not baselines:
            continue
        rows.append({"seed": seed, "setting": "random update",
                     "SimAOU": random_update(zs, icl, seed)})
        for keep in (False, True):
            variant = untrained_copy(template, seed, keep_embeddings=keep)
            start = variant.copy()
            v_zs, v_icl = record(variant, queries), record(variant, queries, shots)
            ft, ft_q = finetuned(variant, start, shots, methods[0])
            name = f"{'embeddings-only' if keep else 'untrained'} ({methods[0]})"
            rows.append({"seed": seed, "setting": name, "lr": chosen[methods[0]],
                         **compare(v_zs, v_icl, ft, ft_q, seed)})
            del variant, start
    bar.close()
    return {"rows": rows, "lr": chosen, "lr_sweep": sweep}


@contextmanager
def swapped_kv(model: LoadedModel, source: LoadedModel):
    """Temporarily give ``model`` (bridged or not) the key/value weights of ``source``."""
    target = kv_parameters(model.hf)
    weights = kv_parameters(source.hf)
    if [plain_name(n) for n, _ in target] != [plain_name(n) for n, _ in weights]:
        raise ConfigError("the two models' key/value parameters do not match")
    with model.swapped({plain_name(n): w.detach() for n, w in weights}):
        yield model


def seed_summary(rows: list[dict]):
    """Mean and std over seeds per setting and metric, as DataFrames."""
    import pandas as pd

    frame = pd.DataFrame([{k: v for k, v in r.items() if k not in ("per_layer", "zero_updates")}
                          for r in rows])
    cols = [m for m in METRICS if m in frame]
    grouped = frame.groupby("setting", sort=False)[cols]
    return grouped.mean(), grouped.std(ddof=0)
