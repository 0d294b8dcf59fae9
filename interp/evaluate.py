"""Accuracy of a model on a task: zero-shot, k-shot ICL sweeps, pattern and control conditions.

Closed answer sets are scored by comparing the log-likelihood of each choice; open answers by
greedy generation, reported as exact match (parsed answer equals the target) and the lenient
substring match the paper used. Every accuracy carries a 95% Wilson interval.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from interp import __version__
from interp.engine import choice_logprobs, greedy_generate
from interp.errors import TaskError
from interp.models import LoadedModel
from interp.prompts import answer_sep, build_prompt, demo_pool, sample_demos
from interp.tasks import Example, generate, get_task

CONDITIONS = ("pattern", "control")
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def parse_answer(text: str) -> str:
    """First line of a continuation, stripped; a leading number if there is one."""
    line = text.strip().split("\n")[0].strip()
    match = _NUMBER.match(line)
    return match.group(1) if match else line.split(" ")[0] if line else ""


@dataclass
class Prediction:
    id: str
    condition: str
    shots: int
    target: str
    prediction: str
    raw: str
    correct: bool
    lenient: bool


@dataclass
class AccuracyRow:
    task: str
    condition: str
    shots: int
    split: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    lenient_accuracy: float


@dataclass
class EvalResult:
    model: str
    task: str
    seed: int
    shots: list[int]
    rows: list[AccuracyRow]
    predictions: list[Prediction] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    version: str = __version__

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows])

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "seed": self.seed, "shots": self.shots,
                "version": self.version, "rows": [asdict(r) for r in self.rows],
                "selection": self.selection}

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"eval_{self.task}.json").write_text(json.dumps(self.to_dict(), indent=2))
        self.to_frame().to_csv(out / f"accuracy_{self.task}.csv", index=False)
        with open(out / f"predictions_{self.task}.jsonl", "w") as fh:
            for p in self.predictions:
                fh.write(json.dumps(asdict(p)) + "\n")
        return out

    def accuracy(self, condition: str, shots: int, split: str = "test") -> float:
        return next(r.accuracy for r in self.rows
                    if (r.condition, r.shots, r.split) == (condition, shots, split))


def predict(model: LoadedModel, queries: Sequence[Example], demos: Sequence[Example] = (),
            header: bool | str | None = True, batch_size: int = 8, use_cache: bool = True,
            chat: bool = False, progress=None) -> list[tuple[str, str]]:
    """(parsed prediction, raw continuation) for each query under the same demonstrations."""
    if not queries:
        return []
    task = queries[0].task
    prompts = [build_prompt(q, demos, header, model.tokenizer, chat) for q in queries]
    prefix = prompts[0].prefix
    texts = [p.query for p in prompts]
    choices = queries[0].choices
    if choices:
        scores = choice_logprobs(model, prefix, texts, choices, sep=answer_sep(task),
                                 batch_size=batch_size, use_cache=use_cache, progress=progress)
        best = scores.argmax(-1).tolist()
        return [(choices[b], " ".join(f"{c}:{s:.3f}" for c, s in zip(choices, row)))
                for b, row in zip(best, scores.tolist())]
    family = get_task(task) if task != "custom" else None
    max_new = family.max_new_tokens if family else 8
    raw = greedy_generate(model, prefix, texts, max_new, batch_size=batch_size,
                          use_cache=use_cache, progress=progress)
    return [(parse_answer(r), r) for r in raw]


def score(queries: Sequence[Example], outputs: Sequence[tuple[str, str]], condition: str,
          shots: int) -> list[Prediction]:
    preds = []
    for q, (pred, raw) in zip(queries, outputs):
        exact = pred.strip() == q.target.strip()
        lenient = exact or (not q.choices and q.target in raw)
        preds.append(Prediction(q.id, condition, shots, q.target, pred, raw, exact, lenient))
    return preds


def summarise(task: str, preds: Sequence[Prediction], condition: str, shots: int,
              split: str) -> AccuracyRow:
    n, k = len(preds), sum(p.correct for p in preds)
    lo, hi = wilson(k, n)
    lenient = sum(p.lenient for p in preds) / n if n else 0.0
    return AccuracyRow(task, condition, shots, split, n, k, k / n if n else 0.0, lo, hi, lenient)


def evaluate(model: LoadedModel, task: str, shots: Sequence[int] = (0, 4), n: int = 100,
             seed: int = 0, conditions: Sequence[str] = CONDITIONS, header: bool | str = True,
             batch_size: int = 8, use_cache: bool = True, n_validation: int = 0,
             pool_size: int = 256, chat: bool = False, progress: bool = True,
             **knobs) -> EvalResult:
    """Shot sweep on the test split for each condition.

    With ``n_validation > 0`` the shot count is also chosen on a separate validation split
    (pattern condition) and that honest test figure is reported beside the best-on-test one.
    """
    get_task(task)
    bad = set(conditions) - set(CONDITIONS)
    if bad:
        raise TaskError(f"unknown condition {sorted(bad)[0]!r}; choose from {CONDITIONS}")
    shots = sorted(set(int(s) for s in shots))
    pool = demo_pool(task, pool_size, seed=seed, **knobs)
    demo_sets = {k: sample_demos(pool, k, seed=seed) for k in shots}
    splits = [("test", n)] + ([("validation", n_validation)] if n_validation else [])
    jobs = [(split, cond, k, m) for split, m in splits for cond in conditions for k in shots]
    total = sum(m for *_, m in jobs)
    bar = tqdm(total=total, desc=f"eval {task}", unit="ex", disable=not progress, leave=False)
    rows, all_preds = [], []
    for split, cond, k, m in jobs:
        queries = generate(task, m, seed=seed, split=split, pattern=cond == "pattern", **knobs)
        outputs = predict(model, queries, demo_sets[k], header, batch_size, use_cache, chat, bar)
        preds = score(queries, outputs, cond, k)
        rows.append(summarise(task, preds, cond, k, split))
        if split == "test":
            all_preds.extend(preds)
    bar.close()
    result = EvalResult(model.spec, task, seed, shots, rows, all_preds)
    result.selection = select_shots(rows)
    return result


def select_shots(rows: Sequence[AccuracyRow]) -> dict:
    """Best ICL shot count chosen on test (the paper's figure) and, if present, on validation."""
    icl = [r for r in rows if r.condition == "pattern" and r.shots > 0]
    out = {}
    test = [r for r in icl if r.split == "test"]
    if test:
        best = max(test, key=lambda r: (r.accuracy, -r.shots))
        out["best_on_test"] = {"shots": best.shots, "test_accuracy": best.accuracy}
    val = [r for r in icl if r.split == "validation"]
    if val and test:
        chosen = max(val, key=lambda r: (r.accuracy, -r.shots)).shots
        acc = next(r.accuracy for r in test if r.shots == chosen)
        out["chosen_on_validation"] = {"shots": chosen, "test_accuracy": acc}
    return out
