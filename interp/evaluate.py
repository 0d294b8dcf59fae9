"""Accuracy of a model on a task: zero-shot, k-shot ICL sweeps, pattern and control conditions,
with baselines and paired tests.

Closed answer sets are scored by comparing the log-likelihood of each choice (``scoring=
"likelihood"``) or, as the paper did, by greedy generation (``"generation"``, which also reports
how often the answer falls outside the answer set); open answers by greedy generation, reported
as exact match (parsed answer equals the target) and the lenient substring match the paper
used. Every accuracy carries a 95% Wilson interval and two baselines: ``chance`` (a uniform guess
over a closed answer set; for open answers, guessing from the items' own answer distribution,
sum of p^2) and ``majority`` (always the most common answer). Control accuracy below chance
(interval entirely under it) is flagged: evidence that the model follows the shortcut.

Shot counts use nested demonstration sets (:func:`~interp.prompts.choose_demos`). The shot count
is chosen on a validation split (the headline); the paper's best-on-test choice is reported
beside it. Every k-shot cell is compared with zero-shot on the same queries by an exact McNemar
test.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from interp.engine import choice_logprobs, greedy_generate
from interp.errors import ConfigError, TaskError
from interp.files import dumps, write_csv, write_text
from interp.models import LoadedModel
from interp.prompts import answer_sep, build_prompt, choose_demos
from interp.results import Result
from interp.stats import mcnemar, wilson
from interp.tasks import REGISTRY, Example, generate, get_task
from interp.version import __version__

ITEM_KINDS = ("pattern", "control")
SCORINGS = ("likelihood", "generation")
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")


def parse_answer(text: str) -> str:
    """First line of a continuation, stripped; a leading number if there is one."""
    line = text.strip().split("\n")[0].strip()
    match = _NUMBER.match(line)
    return match.group(1) if match else line.split(" ")[0] if line else ""


def baselines(queries: Sequence[Example]) -> tuple[float, float]:
    """(chance, majority) accuracy for these items (see the module docstring)."""
    if not queries:
        return float("nan"), float("nan")
    counts = Counter(q.target for q in queries)
    n = len(queries)
    majority = max(counts.values()) / n
    if queries[0].choices:
        return 1.0 / len(queries[0].choices), majority
    return sum((c / n) ** 2 for c in counts.values()), majority


@dataclass
class Prediction:
    id: str
    condition: str
    shots: int
    split: str
    target: str
    prediction: str
    raw: str
    correct: bool
    lenient: bool
    in_answer_set: bool = True


@dataclass
class AccuracyRow:
    task: str
    condition: str
    shots: int
    split: str
    scoring: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    lenient_accuracy: float
    chance: float
    majority: float
    below_chance: bool
    outside_answer_set: float | None = None


@dataclass
class EvalResult(Result):
    model: str
    task: str
    seed: int
    shots: list[int]
    rows: list[AccuracyRow]
    predictions: list[Prediction] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    paired: list[dict] = field(default_factory=list)
    demo_ids: dict = field(default_factory=dict)
    version: str = __version__

    def to_frame(self):
        """One row per (condition, shots, split, scoring) cell; ``value`` is the accuracy."""
        import pandas as pd

        frame = pd.DataFrame([asdict(r) for r in self.rows])
        frame.insert(0, "component", [f"{r.condition}/{r.shots}-shot/{r.split}/{r.scoring}"
                                      for r in self.rows])
        frame["value"] = frame["accuracy"]
        return frame

    def _meta(self) -> dict:
        return {"model": self.model, "task": self.task, "seed": self.seed, "shots": self.shots,
                "version": self.version, "rows": [asdict(r) for r in self.rows],
                "selection": self.selection, "paired": self.paired, "demo_ids": self.demo_ids}

    def to_dict(self) -> dict:
        return self._meta()

    @property
    def stem(self) -> str:
        return f"eval_{self.task}"

    @classmethod
    def _stem_in(cls, directory: Path) -> str:
        found = sorted(directory.glob("eval_*.json"))
        return found[0].stem if found else "eval_<task>"

    def _save_extra(self, out: Path) -> None:
        """``accuracy_<task>.csv`` (the frame) and ``predictions_<task>.jsonl``."""
        write_csv(out / f"accuracy_{self.task}.csv", self.to_frame())
        write_text(out / f"predictions_{self.task}.jsonl", "".join(
            dumps(asdict(p), indent=None) + "\n" for p in self.predictions))

    def _load_extra(self, directory: Path) -> None:
        path = directory / f"predictions_{self.task}.jsonl"
        if path.is_file():
            self.predictions = [Prediction(**json.loads(line))
                                for line in path.read_text().splitlines()]

    @classmethod
    def _from(cls, tensors: dict, meta: dict) -> EvalResult:
        return cls(meta["model"], meta["task"], meta["seed"], meta["shots"],
                   [AccuracyRow(**r) for r in meta["rows"]], [], meta.get("selection", {}),
                   meta.get("paired", []), meta.get("demo_ids", {}),
                   meta.get("version", __version__))

    @classmethod
    def load(cls, directory: str | Path, task: str | None = None) -> EvalResult:
        """``eval_<task>.json`` and its predictions (the first task found when not told)."""
        return super().load(directory, f"eval_{task}" if task else None)

    def accuracy(self, condition: str, shots: int, split: str = "test",
                 scoring: str | None = None) -> float:
        return next(r.accuracy for r in self.rows
                    if (r.condition, r.shots, r.split) == (condition, shots, split)
                    and (scoring is None or r.scoring == scoring))


def predict(model: LoadedModel, queries: Sequence[Example], demos: Sequence[Example] = (),
            header: bool | str | None = True, batch_size: int = 8, use_cache: bool = True,
            chat: bool = False, bar=None, scoring: str = "likelihood"
            ) -> list[tuple[str, str]]:
    """(parsed prediction, raw continuation) for each query under the same demonstrations."""
    if not queries:
        return []
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    task = queries[0].task
    prompts = [build_prompt(q, demos, header, model.tokenizer, chat) for q in queries]
    prefix = prompts[0].prefix
    texts = [p.query for p in prompts]
    choices = queries[0].choices
    if choices and scoring == "likelihood":
        scores = choice_logprobs(model, prefix, texts, choices, sep=answer_sep(task),
                                 batch_size=batch_size, use_cache=use_cache, bar=bar)
        best = scores.argmax(-1).tolist()
        return [(choices[b], " ".join(f"{c}:{s:.3f}" for c, s in zip(choices, row)))
                for b, row in zip(best, scores.tolist())]
    family = get_task(task) if task in REGISTRY else None
    max_new = family.max_new_tokens if family else 8
    raw = greedy_generate(model, prefix, texts, max_new, batch_size=batch_size,
                          use_cache=use_cache, bar=bar)
    return [(parse_answer(r), r) for r in raw]


def score(queries: Sequence[Example], outputs: Sequence[tuple[str, str]], condition: str,
          shots: int, split: str = "test") -> list[Prediction]:
    preds = []
    for q, (pred, raw) in zip(queries, outputs):
        exact = pred.strip() == q.target.strip()
        lenient = exact or (not q.choices and q.target in raw)
        inside = not q.choices or pred.strip() in q.choices
        preds.append(Prediction(q.id, condition, shots, split, q.target, pred, raw, exact,
                                lenient, inside))
    return preds


def accuracy_row(task: str, queries: Sequence[Example], preds: Sequence[Prediction],
              condition: str, shots: int, split: str, scoring: str) -> AccuracyRow:
    n, k = len(preds), sum(p.correct for p in preds)
    lo, hi = wilson(k, n)
    lenient = sum(p.lenient for p in preds) / n if n else 0.0
    chance, majority = baselines(queries)
    outside = None
    if queries and queries[0].choices and scoring == "generation":
        outside = sum(not p.in_answer_set for p in preds) / n
    return AccuracyRow(task, condition, shots, split, scoring, n, k, k / n if n else 0.0, lo, hi,
                       lenient, chance, majority, condition == "control" and hi < chance, outside)


def paired_tests(preds: Sequence[Prediction], shots: Sequence[int], scoring: str) -> list[dict]:
    """McNemar of every k-shot cell against zero-shot on the same test queries."""
    by_cell: dict[tuple, dict[str, bool]] = {}
    for p in preds:
        if p.split == "test":
            by_cell.setdefault((p.condition, p.shots), {})[p.id] = p.correct
    out = []
    for (condition, k), cell in sorted(by_cell.items()):
        zero = by_cell.get((condition, 0))
        if k == 0 or zero is None:
            continue
        ids = sorted(set(cell) & set(zero))
        test = mcnemar([cell[i] for i in ids], [zero[i] for i in ids])
        out.append({"condition": condition, "shots": k, "versus_shots": 0, "scoring": scoring,
                    **test})
    return out


def evaluate(model: LoadedModel, task: str, shots: Sequence[int] = (0, 4), n: int = 100,
             seed: int = 0, conditions: Sequence[str] = ITEM_KINDS, header: bool | str = True,
             batch_size: int = 8, use_cache: bool = True, n_validation: int | None = None,
             pool_size: int = 256, chat: bool = False, progress: bool = True,
             scoring: str | Sequence[str] = "likelihood", **knobs) -> EvalResult:
    """Shot sweep on the test split for each condition (nested demonstrations).

    ``n_validation`` validation queries (default: n // 2 when there are several ICL shot counts,
    0 to switch off) choose the shot count; ``scoring`` may list both scorings for closed
    answer sets.
    """
    family = get_task(task)
    bad = set(conditions) - set(ITEM_KINDS)
    if bad:
        raise TaskError(f"unknown condition {sorted(bad)[0]!r}; choose from {ITEM_KINDS}")
    scorings = [scoring] if isinstance(scoring, str) else list(scoring)
    if not scorings or any(s not in SCORINGS for s in scorings):
        raise ConfigError(f"scoring must be among {', '.join(SCORINGS)}, got {scoring!r}")
    if not family.choices:
        scorings = ["generation"]
    shots = sorted(set(int(s) for s in shots))
    if n_validation is None:
        n_validation = max(8, n // 2) if len([k for k in shots if k > 0]) > 1 else 0
    demos = choose_demos(task, max(shots), seed=seed, pool_size=pool_size, **knobs)
    demo_sets = {k: demos[:k] for k in shots}
    splits = [("test", n)] + ([("validation", n_validation)] if n_validation else [])
    jobs = [(split, cond, k, m, s) for split, m in splits for cond in conditions
            for k in shots for s in scorings]
    bar = tqdm(total=sum(j[3] for j in jobs), desc=f"eval {task}", unit="ex",
               disable=not progress, leave=False)
    rows, all_preds = [], []
    queries_by = {}
    for split, cond, k, m, s in jobs:
        key = (split, cond)
        if key not in queries_by:
            queries_by[key] = generate(task, m, seed=seed, split=split,
                                       pattern=cond == "pattern", **knobs)
        queries = queries_by[key]
        outputs = predict(model, queries, demo_sets[k], header, batch_size, use_cache, chat, bar,
                          scoring=s)
        preds = score(queries, outputs, cond, k, split)
        rows.append(accuracy_row(task, queries, preds, cond, k, split, s))
        if s == scorings[0]:
            all_preds.extend(preds)
    bar.close()
    result = EvalResult(model.spec, task, seed, shots, rows, all_preds,
                        demo_ids={str(k): [d.id for d in v] for k, v in demo_sets.items()})
    result.selection = select_shots([r for r in rows if r.scoring == scorings[0]])
    result.paired = paired_tests(all_preds, shots, scorings[0])
    return result


def select_shots(rows: Sequence[AccuracyRow]) -> dict:
    """The ICL shot count chosen on validation (the headline, when a validation split was
    scored) and the best one on test (the paper's protocol), with their test accuracies."""
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
    out["headline"] = "chosen_on_validation" if "chosen_on_validation" in out else "best_on_test"
    return out
