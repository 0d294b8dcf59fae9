"""Measuring a condition: accuracy on the test queries, and every head's and MLP's effect on
each counterfactual pair (attribution patching, in logit units: the estimated change of
logit[answer] - logit[foil] when that component's clean activation is patched into the corrupt
run).

One bridged base model serves every condition: a condition with a weight update gets
``base + delta`` swapped in for the duration (:class:`ConditionRunner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from interp.analysis.attribution import attribution_components
from interp.analysis.metrics import logit_diff
from interp.engine import chunks, encode, right_padded
from interp.errors import DegenerateDataError
from interp.evaluate import predict, score
from interp.finetune.deltas import Delta, absolute
from interp.models import LoadedModel
from interp.prompts import prefix_text
from interp.shift.conditions import Condition, PairSet
from interp.tasks import Example

PAIR_BATCH = 32


class ConditionRunner:
    """The run's one model, and the weight updates its conditions put in."""

    def __init__(self, model: LoadedModel, updates: dict[str, Delta], task: str):
        self.model, self.updates, self.task = model, updates, task
        names = set().union(*[set(d) for d in updates.values()]) if updates else set()
        self.base = model.state(sorted(names)) if names else {}

    @contextmanager
    def use(self, condition: Condition):
        delta = self.updates[condition.update] if condition.update else None
        with self.model.swapped(absolute(self.base, delta) if delta else None):
            yield self.model

    def prefix(self, condition: Condition) -> list[int]:
        return encode(self.model.tokenizer, prefix_text(self.task, condition.demos), first=True)


def accuracy(runner: ConditionRunner, condition: Condition,
             queries: dict[str, Sequence[Example]], batch_size: int = 32) -> dict[str, list]:
    """Per query condition (pattern / control): each test query's correctness, in order."""
    out = {}
    with runner.use(condition) as model:
        for cond, qs in queries.items():
            outputs = predict(model, qs, condition.demos, batch_size=batch_size)
            out[cond] = [p.correct for p in score(qs, outputs, cond, len(condition.demos))]
    return out


def pair_scores(runner: ConditionRunner, condition: Condition, pairs: PairSet
                ) -> dict[str, torch.Tensor]:
    """Effects of every head ``heads [L, H, n]`` and MLP ``mlp [L, n]`` (summed over
    positions) on each pair, and the unpatched metrics ``clean [n]``, ``corrupt [n]``."""
    model = runner.model
    L, H, n = model.n_layers, model.n_heads, len(pairs)
    heads, mlp = torch.zeros(L, H, n), torch.zeros(L, n)
    clean_m, corrupt_m = torch.zeros(n), torch.zeros(n)
    prefix = runner.prefix(condition)
    by_length = sorted(range(n), key=lambda i: len(pairs.clean[i]))
    pad = model.tokenizer.pad_token_id or 0
    with runner.use(condition):
        for part in chunks(n, PAIR_BATCH):       # pairs of similar lengths, right-padded
            idx = [by_length[i] for i in part]
            rows = [prefix + pairs.clean[i] for i in idx]
            clean = right_padded(rows, pad, model.device)
            corrupt = right_padded([prefix + pairs.corrupt[i] for i in idx], pad, model.device)
            metric = logit_diff([pairs.answer_ids[i] for i in idx],
                                [pairs.foil_ids[i] for i in idx])
            out = attribution_components(model, clean, corrupt, metric, ("heads", "mlp"),
                                         with_metric=True, lengths=[len(r) for r in rows])
            heads[..., idx] = out["heads"]
            mlp[..., idx] = out["mlp"].sum(1)
            clean_m[idx], corrupt_m[idx] = out["source"], out["target"]
    check_spread(clean_m, pairs, condition.key)
    return {"heads": heads, "mlp": mlp, "clean": clean_m, "corrupt": corrupt_m}


def check_spread(metric: torch.Tensor, pairs: PairSet, condition: str) -> None:
    """A model that reads its input gives distinct prompts distinct metrics: if every group of
    pairs with the same answer and foil tokens (and distinct clean prompts) has one metric value,
    the model ignored its input (a broken engine, not a result) and the run stops."""
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(pairs.answer_ids, pairs.foil_ids)):
        groups.setdefault(key, []).append(i)
    spreads = [float(metric[idx].max() - metric[idx].min()) for idx in groups.values()
               if len({tuple(pairs.clean[i]) for i in idx}) > 1]
    tol = 1e-6 * (1.0 + float(metric.abs().max())) if len(metric) else 0.0
    if spreads and max(spreads) <= tol:
        raise DegenerateDataError(
            f"condition {condition}: every one of {len(metric)} distinct prompts gives the same "
            f"clean metric ({float(metric[0]):.4g}): the model ignored its input; check the "
            f"installed versions (make install)")


def measure_all(runner: ConditionRunner, conditions: Sequence[Condition],
                pair_sets: dict[str, PairSet], progress: bool = True
                ) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """``{condition key: {pair kind: scores}}`` for every condition and pair set."""
    out: dict = {}
    bar = tqdm(total=len(conditions) * len(pair_sets), desc="score conditions",
               disable=not progress)
    for cond in conditions:
        out[cond.key] = {}
        for kind, pairs in pair_sets.items():
            out[cond.key][kind] = pair_scores(runner, cond, pairs)
            bar.update(1)
    bar.close()
    return out


def flatten(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-pair component scores ``[n_components, n_pairs]``: heads (layer-major), then MLPs."""
    heads = scores["heads"]
    return torch.cat([heads.reshape(-1, heads.shape[-1]), scores["mlp"]]).double()
