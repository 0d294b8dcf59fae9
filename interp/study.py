"""``run_study``: the controlled circuit-shift experiment and its causal tests for every model x
task, summarised as a table of pre-registered claims (:mod:`interp.claims`).

Each cell is an ``interp shift`` run with the causal tests (``<out>/<model>/<task>/``), so a
study resumes cell by cell. ``claims.csv`` has one row per claim, task and model; the report
(``study.html``) adds Holm-corrected p-values per claim and a random-effects pooled row per claim
and model across tasks, and a forest plot of every claim.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from interp.claims import BY_NAME, CLAIMS, claim_rows, verdict
from interp.errors import ConfigError, InterpError
from interp.files import check_writable, now, read_json, write_csv, write_json
from interp.models import load_model
from interp.provenance import write_provenance
from interp.report.study import write_study_report
from interp.shift import ShiftConfig, run_shift
from interp.shift.compare import condition_summary
from interp.shift.conditions import build_conditions, build_pairs
from interp.shift.measure import ConditionRunner, flatten, pair_scores
from interp.tasks import get_task

CLAIM_COLUMNS = ["claim", "task", "model", "prediction", "margin", "estimate", "ci_low",
                 "ci_high", "verdict", "reason", "shots", "n_train", "steps", "n_pairs",
                 "demo_seeds", "ft_seeds"]



@dataclass
class StudyConfig:
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    tasks: list[str] = field(default_factory=lambda: ["boolean"])
    shots: int = 4
    n_train: int = 64
    n_eval: int = 32
    n_pairs: int = 16
    demo_seeds: int = 2
    ft_seeds: int = 2
    n_boot: int = 500
    quick: bool = False
    preflight: bool = False
    probes: bool = False
    device: str | None = None
    dtype: str | None = None
    out: str = "runs/study"
    force: bool = False
    progress: bool = True
    #: task -> knobs (default: each family's documented measurable setting)
    knobs: dict = field(default_factory=dict)
    #: 1, not 0: the measurable settings were chosen on seed-0 pairs, so the study measures on
    #: fresh pairs, demonstrations and training data
    seed: int = 1

    def __post_init__(self):
        if not self.models or not self.tasks:
            raise ConfigError("a study needs at least one model and one task")
        for task in self.tasks:
            get_task(task)
        if len(set(self.tasks)) != len(self.tasks) or len(set(self.models)) != len(self.models):
            raise ConfigError("models and tasks must not repeat")

    def shift_config(self, model: str, task: str) -> ShiftConfig:
        return ShiftConfig(model=model, task=task, shots=self.shots, n_train=self.n_train,
                           n_eval=self.n_eval, n_pairs=self.n_pairs, demo_seeds=self.demo_seeds,
                           ft_seeds=self.ft_seeds, n_boot=self.n_boot, quick=self.quick,
                           probes=self.probes, causal=True, device=self.device, dtype=self.dtype,
                           out=str(cell_dir(self.out, model, task)), force=self.force,
                           progress=self.progress,
                           seed=self.seed,
                           knobs=dict(self.knobs.get(task, get_task(task).measurable_knobs)))


def cell_dir(out: str | Path, model: str, task: str) -> Path:
    safe = model.replace("/", "--").replace(".gguf", "").strip(".") or "model"
    return Path(out) / Path(safe).name / task


def preflight(config: ShiftConfig) -> dict:
    """Gaps and reliabilities of base-zs and base-icl on n pairs (one demonstration set), and
    whether the cell can be run: base-icl must pass its gates (without an ICL behaviour there
    is nothing to explain; a base-zs that fails only undefines the shifts from it). Cheap: no
    fine-tuning."""
    model = load_model(config.model, device=config.device, dtype=config.dtype)
    conds = {c.name: c for c in build_conditions(config, model.tokenizer) if c.seed == 0}
    pairs = build_pairs(config, model.tokenizer, config.n_pairs)
    runner = ConditionRunner(model, {}, config.task)
    out = {}
    for name in ("base-zs", "base-icl"):
        s = pair_scores(runner, conds[name], pairs)
        out[name] = condition_summary(flatten(s), s["clean"] - s["corrupt"], config.n_boot,
                                      config.seed)
    out["runnable"] = out["base-icl"]["passes"]
    return out


def skipped_rows(config: ShiftConfig, model: str, task: str, reason: str) -> list[dict]:
    return [{"claim": c.name, "task": task, "model": model, "prediction": c.prediction,
             "margin": c.margin, "estimate": None, "ci_low": None, "ci_high": None,
             "verdict": "inconclusive", "reason": reason, "shots": config.shots,
             "n_train": config.n_train, "steps": None, "n_pairs": config.n_pairs,
             "demo_seeds": config.demo_seeds, "ft_seeds": config.ft_seeds} for c in CLAIMS]


def run_study(config: StudyConfig) -> dict:
    out = check_writable(config.out)
    started = now()
    rows, cells = [], []
    for model in config.models:
        for task in config.tasks:
            shift_config = config.shift_config(model, task)
            cell = {"model": model, "task": task, "dir": str(cell_dir(".", model, task))}
            began = now()
            check = None
            if config.preflight:
                check = preflight(shift_config)
                cell["preflight"] = check
            if check is not None and not check["runnable"]:
                why = f"base-icl: {check['base-icl']['reason']}"
                rows += skipped_rows(shift_config, model, task, f"skipped by preflight: {why}")
                cell["status"] = "skipped"
            else:
                try:
                    results = run_shift(shift_config)
                except InterpError as exc:   # one cell's impossibility is not the study's
                    rows += skipped_rows(shift_config, model, task, f"not run: {exc}")
                    cell["status"] = f"failed: {exc}"
                else:
                    rows += claim_rows(results, model, task, config.n_boot)
                    cell.update(status="done", verdict_code=results["verdict_code"],
                                seconds=results["timings"].get("total"))
            cell["started"], cell["ended"] = began, now()
            cells.append(cell)
            _write(out, config, rows, cells, started)   # a study interrupted keeps its cells
    return {"claims": rows, "cells": cells}


def _write(out: Path, config: StudyConfig, rows: list[dict], cells: list[dict], started: str):
    claims = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    write_csv(out / "claims.csv", claims)
    summary = summarise(claims)
    write_csv(out / "claims_pooled.csv", pd.DataFrame(summary["pooled"]))
    write_json(out / "study.json", {"config": asdict(config), "cells": cells, "claims": rows,
                                    "holm": summary["holm"], "pooled": summary["pooled"],
                                    "claim_definitions": [asdict(c) for c in CLAIMS]})
    write_study_report(out, claims, summary, cells, config)
    write_provenance(out, asdict(config), {m: m for m in config.models}, started)


def _se(row) -> float | None:
    if row["ci_low"] is None or row["ci_high"] is None or pd.isna(row["ci_low"]):
        return None
    return max((row["ci_high"] - row["ci_low"]) / (2 * 1.96), 1e-9)


def summarise(claims: pd.DataFrame) -> dict:
    """Holm-corrected p-values (normal approximation from each interval) per claim across cells,
    and a DerSimonian-Laird random-effects pooled estimate per claim and model across tasks."""
    holm, pooled = [], []
    for name in BY_NAME:
        part = claims[(claims.claim == name) & claims.estimate.notna()]
        ps = []
        for _, row in part.iterrows():
            se = _se(row)
            z = abs(row["estimate"]) / se if se else 0.0
            ps.append((row["task"], row["model"], math.erfc(z / math.sqrt(2))))
        order = sorted(range(len(ps)), key=lambda i: ps[i][2])
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (len(ps) - rank) * ps[i][2]))
            holm.append({"claim": name, "task": ps[i][0], "model": ps[i][1], "p": ps[i][2],
                         "p_holm": running})
        for model, group in part.groupby("model"):
            est = torch.tensor(group.estimate.tolist(), dtype=torch.float64)
            se = torch.tensor([_se(r) for _, r in group.iterrows()], dtype=torch.float64)
            w = 1 / se ** 2
            mean_w = (w * est).sum() / w.sum()
            q = float((w * (est - mean_w) ** 2).sum())
            k = len(est)
            c = float(w.sum() - (w ** 2).sum() / w.sum())
            tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
            w2 = 1 / (se ** 2 + tau2)
            value = float((w2 * est).sum() / w2.sum())
            half = 1.96 * float((1 / w2.sum()) ** 0.5)
            ci = [value - half, value + half]
            pooled.append({"claim": name, "model": model, "tasks": k, "estimate": value,
                           "ci_low": ci[0], "ci_high": ci[1], "tau2": tau2,
                           "verdict": verdict(BY_NAME[name], value, ci)})
    return {"holm": holm, "pooled": pooled}


def load_study(out: str | Path) -> dict:
    data = read_json(Path(out) / "study.json")
    if data is None:
        raise ConfigError(f"no readable study.json in {out}")
    return data
