"""Counterfactual prompt pairs, and patching a list of them.

A pair is a clean and a corrupt prompt of equal token length whose answers differ. Each task
family declares two edits (see :class:`interp.tasks.TaskFamily`): ``counterfactual`` (the
shortcut and the full rule agree on both prompts; what ``kind="counterfactual"`` builds) and
``separating`` (they disagree: the rule's answer changes, the shortcut's does not;
``kind="separating"``). Under ICL both members share the same demonstrations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.analysis.attribution import attribution_patch, direct_logit_attribution
from interp.analysis.components import kind as component_kind
from interp.analysis.metrics import answer_logprob, first_answer_token, logit_diff
from interp.analysis.patching import ablate, activation_patch, run_metric
from interp.analysis.results import PatchResult
from interp.engine import check_length, length_groups
from interp.errors import ConfigError, TaskError
from interp.models import LoadedModel
from interp.prompts import answer_sep, build_prompt
from interp.tasks import Example, pair_sources

PAIR_FIELDS = ("clean", "corrupt", "answer", "foil")


def task_pairs(task: str, n: int, seed: int = 0, split: str = "test",
               demos: Sequence[Example] = (), header: bool | str = True, tokenizer=None,
               kind: str = "counterfactual", **knobs) -> list[dict]:
    """n text pairs ``{"clean", "corrupt", "answer", "foil", "id"}`` of one edit kind. With a
    ``tokenizer``, pairs whose prompts tokenise to different lengths, or whose answers share
    their first token, are skipped."""
    out = []
    sep = answer_sep(task)
    for ex, corrupt_input, foil in pair_sources(task, n, seed, split, kind, **knobs):
        prefix = build_prompt(ex, demos, header).prefix
        pair = {"clean": prefix + ex.input, "corrupt": prefix + corrupt_input,
                "answer": sep + ex.target, "foil": sep + foil, "id": ex.id}
        if tokenizer is not None:
            a, b = (len(tokenizer(pair[k]).input_ids) for k in ("clean", "corrupt"))
            if a != b or first_answer_token(tokenizer, pair["answer"]) == first_answer_token(
                    tokenizer, pair["foil"]):
                continue
        out.append(pair)
        if len(out) == n:
            return out
    raise TaskError(f"could only build {len(out)} of {n} {task} {kind} pairs; ask for fewer")


def check_pair(row, where: str) -> dict:
    """A pair row with string fields, non-empty answers that differ; else a one-line error."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: a pair must be a JSON object")
    missing = [k for k in PAIR_FIELDS if k not in row]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    for key in PAIR_FIELDS:
        if not isinstance(row[key], str):
            raise ConfigError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
    for key in ("clean", "corrupt", "answer", "foil"):
        if not row[key].strip():
            raise ConfigError(f"{where}: {key!r} is empty")
    if row["answer"].strip() == row["foil"].strip():
        raise ConfigError(f"{where}: answer and foil are the same ({row['answer']!r}); the "
                          "logit difference between them is always 0")
    return row


def read_pairs(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such pairs file: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte {exc.start})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{lineno}: not JSON") from exc
        rows.append(check_pair(row, f"{path}:{lineno}"))
    if not rows:
        raise ConfigError(f"{path} holds no pairs")
    return rows


def tokenize_pairs(model: LoadedModel, pairs: Sequence[dict]) -> list[dict]:
    """Tokenise as ``TransformerBridge.to_tokens`` does by default (BOS prepended)."""
    bridge, tok = model.bridge, model.tokenizer
    out = []
    for i, p in enumerate(pairs):
        check_pair(p, f"pair {i}")
        for side in ("clean", "corrupt"):   # to_tokens would cut a long prompt silently
            check_length(model, len(tok(p[side]).input_ids) + 1, f"pair {i}'s {side} prompt")
        clean, corrupt = bridge.to_tokens(p["clean"])[0], bridge.to_tokens(p["corrupt"])[0]
        if clean.shape != corrupt.shape:
            raise ConfigError(f"pair {i}: clean and corrupt tokenise to {clean.shape[0]} and "
                              f"{corrupt.shape[0]} tokens; they must match")
        answer, foil = first_answer_token(tok, p["answer"]), first_answer_token(tok, p["foil"])
        if answer == foil:
            raise ConfigError(f"pair {i}: answer {p['answer']!r} and foil {p['foil']!r} start "
                              "with the same token, so their logit difference is always 0")
        out.append({"clean": clean.cpu(), "corrupt": corrupt.cpu(), "answer_id": answer,
                    "foil_id": foil, "id": p.get("id", str(i))})
    return out


def _stack(tokens: Sequence[dict], idx, key: str, device) -> torch.Tensor:
    return torch.stack([tokens[i][key] for i in idx]).to(device)


def patch_pairs(model: LoadedModel, pairs: Sequence[dict], component: str = "heads",
                method: str = "activation", direction: str = "denoise", metric=None,
                chunk: int | None = None, progress: bool = False) -> PatchResult:
    """Patch pairs of any lengths; returns a :class:`PatchResult` with per-pair scores
    ``[*grid, n_pairs]``.

    ``pairs`` are text pairs ``{"clean", "corrupt", "answer", "foil"}`` (tokenised here) or
    tokenised ones from :func:`tokenize_pairs`. Pairs are grouped by token length, so no padding
    ever enters a forward. Position-indexed components (``resid``, ``attn``, ``mlp``,
    ``heads_pos``) over pairs of several lengths are aligned on the last token: position -1 is
    every prompt's final token, and the grid keeps as many positions as the shortest prompt has
    (``result.positions`` holds the offsets). ``metric(idx)``, if given, builds the metric for
    the pairs ``idx`` of one length group (default: logit difference answer - foil).
    """
    if method not in ("activation", "attribution"):
        raise ConfigError(f"method must be 'activation' or 'attribution', got {method!r}")
    spec = component_kind(component)
    if not pairs:
        raise ConfigError("no pairs to patch")
    if isinstance(pairs[0].get("clean"), str):
        pairs = tokenize_pairs(model, pairs)
    for i, p in enumerate(pairs):
        if p["clean"].shape != p["corrupt"].shape:
            raise ConfigError(f"pair {i}: clean and corrupt token lengths differ")
    groups = length_groups(pairs)
    width = min(groups)
    scores, clean_base, corrupt_base = {}, {}, {}
    bar = tqdm(total=len(pairs), desc=f"{method} {component}", disable=not progress)
    for length, idx in sorted(groups.items()):
        clean = _stack(pairs, idx, "clean", model.device)
        corrupt = _stack(pairs, idx, "corrupt", model.device)
        if metric is None:
            m = logit_diff([pairs[i]["answer_id"] for i in idx],
                           [pairs[i]["foil_id"] for i in idx])
        else:
            m = metric(idx)
        c, k = run_metric(model, clean, m), run_metric(model, corrupt, m)
        if method == "activation":
            s = activation_patch(model, clean, corrupt, m, component, direction, chunk)
        else:  # estimated patched metric = target baseline + first-order effect
            s = attribution_patch(model, clean, corrupt, m, component, direction)
            s = s + (k if direction == "denoise" else c)
        if spec.per_position:
            s = s[..., length - width:, :]
        for j, i in enumerate(idx):
            scores[i], clean_base[i], corrupt_base[i] = s[..., j], c[j], k[j]
        bar.update(len(idx))
    bar.close()
    order = range(len(pairs))
    positions = None
    if spec.per_position:
        positions = list(range(width)) if len(groups) == 1 else list(range(-width, 0))
    return PatchResult(component, method, direction,
                       torch.stack([scores[i] for i in order], dim=-1),
                       torch.stack([clean_base[i] for i in order]),
                       torch.stack([corrupt_base[i] for i in order]), positions,
                       meta={"ids": [p.get("id", str(i)) for i, p in enumerate(pairs)]})


def pair_metric(pairs: Sequence[dict], idx: Sequence[int], metric: str = "logit_diff"):
    """The metric of tokenised pairs ``idx``: ``logit_diff`` (answer - foil) or ``logprob``."""
    answers = [pairs[i]["answer_id"] for i in idx]
    if metric == "logprob":
        return answer_logprob(answers)
    if metric != "logit_diff":
        raise ConfigError(f"metric must be logit_diff or logprob, got {metric!r}")
    return logit_diff(answers, [pairs[i]["foil_id"] for i in idx])


def over_lengths(pairs: Sequence[dict], fn) -> torch.Tensor:
    """``fn(clean [b, pos], idx)`` (a tensor ``[..., b]``) applied per token length of tokenised
    ``pairs``; the results ``[..., n_pairs]`` in pair order."""
    parts, order = [], []
    for idx in length_groups(pairs).values():
        parts.append(fn(torch.stack([pairs[i]["clean"] for i in idx]), idx))
        order.extend(idx)
    out = torch.cat(parts, dim=-1)
    return out[..., torch.tensor(order).argsort()]


def dla_pairs(model: LoadedModel, pairs: Sequence[dict]) -> torch.Tensor:
    """Direct logit attribution (answer - foil) of every head on each pair's clean prompt:
    ``[n_layers, n_heads, n_pairs]``."""
    return over_lengths(pairs, lambda clean, idx: direct_logit_attribution(
        model, clean.to(model.device), [pairs[i]["answer_id"] for i in idx],
        [pairs[i]["foil_id"] for i in idx])["heads"])


def ablation_pairs(model: LoadedModel, pairs: Sequence[dict], mode: str = "zero",
                   metric: str = "logit_diff", chunk: int | None = None) -> torch.Tensor:
    """Each head's importance on each pair's clean prompt: the metric's drop when the head is
    ablated (``zero`` or ``mean``): ``[n_layers, n_heads, n_pairs]``."""
    def drop(clean, idx):
        clean, m = clean.to(model.device), pair_metric(pairs, idx, metric)
        return run_metric(model, clean, m) - ablate(model, clean, m, mode, chunk=chunk)
    return over_lengths(pairs, drop)
