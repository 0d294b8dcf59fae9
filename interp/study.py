"""``run_study``: the controlled circuit-shift experiment and its causal tests for every model x
task, summarised as a table of pre-registered claims (:mod:`interp.claims`).

Each cell is an ``interp shift`` run with the causal tests (``<out>/<model>/<task>/``), so a
study resumes cell by cell. ``claims.csv`` has one row per claim, task and model; the report
(``study.html``) adds Holm-corrected p-values per claim and a random-effects pooled row per claim
and model across tasks, and a forest plot of every claim.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from interp.claims import BY_NAME, CLAIMS, claim_rows, verdict
from interp.errors import ConfigError, InterpError
from interp.files import check_writable, now, read_json, write_csv, write_json
from interp.locks import release_outputs
from interp.provenance import file_commit, write_provenance
from interp.report.study import write_study_report
from interp.shift import ShiftConfig, preflight, run_shift, study_template
from interp.tasks import get_task

CLAIM_COLUMNS = ["claim", "task", "model", "prediction", "margin", "estimate", "ci_low",
                 "ci_high", "se", "mdd", "verdict", "p_holm", "reason", "shots", "n_train",
                 "steps", "n_pairs", "demo_seeds", "ft_seeds", "cell_mdd"]
ALPHA = 0.05



@dataclass
class StudyConfig:
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    tasks: list[str] = field(default_factory=lambda: ["boolean"])
    #: the cells' settings (:func:`study_template`); each cell replaces model, task, out, knobs
    shift: ShiftConfig = field(default_factory=study_template)
    preflight: bool = False
    #: the primary contrast's minimum detectable difference to plan each cell's pairs for (from
    #: the preflight's variance estimate; implies ``preflight``)
    target_mdd: float | None = None
    out: str = "runs/study"
    #: task -> knobs (default: each family's documented measurable setting)
    knobs: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.models or not self.tasks:
            raise ConfigError("a study needs at least one model and one task")
        if self.target_mdd is not None and not self.target_mdd > 0:
            raise ConfigError(f"target_mdd must be > 0, got {self.target_mdd}")
        for task in self.tasks:
            get_task(task)
        if len(set(self.tasks)) != len(self.tasks) or len(set(self.models)) != len(self.models):
            raise ConfigError("models and tasks must not repeat")

    def shift_config(self, model: str, task: str) -> ShiftConfig:
        """The cell's shift settings, with the sizes it runs at (quick ones under ``quick``)."""
        knobs = dict(self.knobs.get(task, get_task(task).measurable_knobs))
        return replace(self.shift, model=model, task=task, out=str(cell_dir(self.out, model, task)),
                       knobs=knobs).resolved()


def cell_dir(out: str | Path, model: str, task: str) -> Path:
    safe = model.replace("/", "--").replace(".gguf", "").strip(".") or "model"
    return Path(out) / Path(safe).name / task


def skipped_rows(config: ShiftConfig, model: str, task: str, reason: str) -> list[dict]:
    return [{"claim": c.name, "task": task, "model": model, "prediction": c.prediction,
             "margin": c.margin, "estimate": None, "ci_low": None, "ci_high": None,
             "verdict": "inconclusive", "reason": reason, "shots": config.shots,
             "n_train": config.n_train, "steps": None, "n_pairs": config.n_pairs,
             "demo_seeds": config.demo_seeds, "ft_seeds": config.ft_seeds} for c in CLAIMS]


def run_study(config: StudyConfig) -> dict:
    """Every cell (resumable), the claims table and the report; the output directory is this
    study's alone while it runs."""
    try:
        return _run_cells(config)
    finally:
        release_outputs(config.out)


def _run_cells(config: StudyConfig) -> dict:
    out = check_writable(config.out)
    started = now()
    rows, cells = [], []
    for model in config.models:
        for task in config.tasks:
            cell_rows, cell = _run_cell(config, model, task)
            rows += cell_rows
            cells.append(cell)
            _write(out, config, rows, cells, started)   # a study interrupted keeps its cells
    return {"claims": rows, "cells": cells}


def _run_cell(config: StudyConfig, model: str, task: str) -> tuple[list[dict], dict]:
    """One cell's claim rows (skipped ones included) and its record in ``study.json``."""
    shift_config = config.shift_config(model, task)
    cell = {"model": model, "task": task, "dir": str(cell_dir(".", model, task))}
    began = now()
    check = None
    if config.preflight or config.target_mdd is not None:
        check = preflight(shift_config, config.target_mdd)
        cell["preflight"] = check
        if "plan" in check:
            shift_config = replace(shift_config, n_pairs=check["plan"]["n_pairs"])
            _say_plan(model, task, check["plan"], shift_config.progress)
    if check is not None and not check["runnable"]:
        why = f"base-icl: {check['base-icl']['reason']}"
        rows = skipped_rows(shift_config, model, task, f"skipped by preflight: {why}")
        cell["status"] = "skipped"
    else:
        try:
            results = run_shift(shift_config)
        except InterpError as exc:   # one cell's impossibility is not the study's
            rows = skipped_rows(shift_config, model, task, f"not run: {exc}")
            cell["status"] = f"failed: {exc}"
        else:
            rows = claim_rows(results, model, task, shift_config.n_boot)
            cell.update(status="done", verdict_code=results["verdict_code"],
                        seconds=results["timings"].get("total"))
    planned = (check or {}).get("plan", {}).get("mdd_planned")   # where the cell has none
    rows = [{**r, "cell_mdd": planned if r.get("cell_mdd") is None else r["cell_mdd"]}
            for r in rows]
    cell["started"], cell["ended"] = began, now()
    return rows, cell


def _say_plan(model: str, task: str, plan: dict, show: bool) -> None:
    if show and "estimated_hours" in plan:
        print(f"{model} / {task}: {plan['n_pairs']} pairs for an MDD of {plan['target_mdd']:g} "
              f"(preflight: {plan['mdd_at_preflight']:.3f} at {plan['preflight_pairs']}); "
              f"estimated at least {plan['estimated_hours']:.1f} h", flush=True)


def _write(out: Path, config: StudyConfig, rows: list[dict], cells: list[dict], started: str):
    summary = claims_summary(pd.DataFrame(rows, columns=CLAIM_COLUMNS))
    claims = pd.DataFrame(summary["claims"], columns=CLAIM_COLUMNS)
    write_csv(out / "claims.csv", claims)
    write_csv(out / "claims_pooled.csv", pd.DataFrame(summary["pooled"]))
    total = len(config.models) * len(config.tasks)
    write_json(out / "study.json", {"config": asdict(config), "cells": cells,
                                    "complete": len(cells) == total, "cells_total": total,
                                    "claims": summary["claims"],
                                    "holm": summary["holm"], "pooled": summary["pooled"],
                                    "claim_definitions": [asdict(c) for c in CLAIMS],
                                    "claims_commit": file_commit("interp/claims.py")})
    write_study_report(out, claims, summary, cells, config)
    write_provenance(out, asdict(config), {m: m for m in config.models}, started)


def _se(row) -> float | None:
    se = row.get("se")
    if se is not None and se == se:
        return max(float(se), 1e-9)
    if row.get("ci_low") is None or row.get("ci_high") is None or pd.isna(row["ci_low"]):
        return None
    return max((row["ci_high"] - row["ci_low"]) / (2 * 1.96), 1e-9)


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def minimal_effect_pvalues(row, margin: float) -> tuple[float, float] | None:
    """One-sided p-values of the two minimal-effect nulls of a claim row: theta <= +margin
    (against ``holds``) and theta >= -margin (against ``contradicted``), normal approximation
    with the standard error of the row's resamples."""
    se = _se(row)
    if se is None or row.get("estimate") is None or pd.isna(row["estimate"]):
        return None
    est = float(row["estimate"])
    return 1 - _normal_cdf((est - margin) / se), _normal_cdf((est + margin) / se)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def apply_holm(rows: list[dict]) -> list[dict]:
    """The study's multiplicity correction. The family: for every claim x cell row with a
    defined estimate (moot rows excluded), both minimal-effect tests (holds, contradicted).
    A ``holds`` or ``contradicted`` verdict stands only if its Holm-adjusted p-value is below
    0.05; otherwise it becomes ``inconclusive`` with the reason. ``p_holm`` is the row's
    adjusted p-value for the direction its estimate points to."""
    tests = []
    for i, row in enumerate(rows):
        p = None if row["verdict"] == "moot" else minimal_effect_pvalues(row, row["margin"])
        if p is not None:
            tests += [(i, "holds", p[0]), (i, "contradicted", p[1])]
    adjusted = holm([t[2] for t in tests])
    out = [dict(r, p_holm=None) for r in rows]
    for (i, direction, _), p_adj in zip(tests, adjusted):
        row = out[i]
        if (direction == "holds") == (row["estimate"] >= 0):
            row["p_holm"] = p_adj
        if row["verdict"] == direction and p_adj >= ALPHA:
            row["verdict"] = "inconclusive"
            row["reason"] = (f"{direction} by its interval, but not after Holm's correction "
                             f"over {len(tests)} tests (p_holm = {p_adj:.3f})")
    return out


def pool(estimates: list[float], ses: list[float]) -> dict:
    """Random-effects pooling across tasks: DerSimonian-Laird between-task variance and the
    Hartung-Knapp-Sidik-Jonkman interval (t with k - 1 degrees of freedom)."""
    from scipy.stats import t as student_t

    est = torch.tensor(estimates, dtype=torch.float64)
    se = torch.tensor(ses, dtype=torch.float64)
    k = len(est)
    w = 1 / se ** 2
    mean_w = (w * est).sum() / w.sum()
    q = float((w * (est - mean_w) ** 2).sum())
    c = float(w.sum() - (w ** 2).sum() / w.sum())
    tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
    w2 = 1 / (se ** 2 + tau2)
    value = float((w2 * est).sum() / w2.sum())
    q_hk = float((w2 * (est - value) ** 2).sum()) / (k - 1)
    half = float(student_t.ppf(0.975, k - 1)) * math.sqrt(max(q_hk, 1e-300) / float(w2.sum()))
    return {"estimate": value, "ci_low": value - half, "ci_high": value + half, "tau2": tau2}


def claims_summary(claims: pd.DataFrame) -> dict:
    """Holm-adjusted p-values (see :func:`apply_holm`) and, per claim and model, a pooled
    estimate across tasks (:func:`pool`) where there are at least 3 tasks; with fewer, the
    per-task rows are the result."""
    rows = apply_holm(claims.to_dict("records"))
    holm_rows = [{"claim": r["claim"], "task": r["task"], "model": r["model"],
                  "p_holm": r["p_holm"]} for r in rows if r["p_holm"] is not None]
    pooled = []
    frame = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    for name in BY_NAME:
        part = frame[(frame.claim == name) & frame.estimate.notna()]
        for model, group in part.groupby("model"):
            k = len(group)
            if k < 3:
                pooled.append({"claim": name, "model": model, "tasks": k, "estimate": None,
                               "ci_low": None, "ci_high": None, "tau2": None,
                               "verdict": "inconclusive",
                               "reason": f"{k} task(s): fewer than 3, per-task rows only"})
                continue
            p = pool(group.estimate.tolist(), [_se(r) for _, r in group.iterrows()])
            pooled.append({"claim": name, "model": model, "tasks": k, **p, "reason": None,
                           "verdict": verdict(BY_NAME[name], p["estimate"],
                                              [p["ci_low"], p["ci_high"]])})
    return {"holm": holm_rows, "pooled": pooled, "claims": rows}


def load_study(out: str | Path) -> dict:
    data = read_json(Path(out) / "study.json")
    if data is None:
        raise ConfigError(f"no readable study.json in {out}")
    return data
