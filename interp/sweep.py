"""Paper-style sweeps: a YAML grid of models x tasks x seeds x (ICL shots | training sizes), one
JSON file per finished cell (a rerun skips it), one combined table and the figures of the paper's
main results: accuracy vs shots, accuracy vs training samples, shift(ICL) vs shift(FT).

Config (``experiments/configs/*.yaml``)::

    name: smollm2-135m
    models: [smollm2-135m]
    tasks: [boolean, parity]
    seeds: [0]
    eval: {shots: [0, 1, 2, 4, 8, 16], n: 64}           # ICL sweep (pattern and control)
    finetune: {method: lora, n_train: [64, 256], n_eval: 64, epochs: 1}   # optional
    shift: {shots: 4, n_train: 128, n_pairs: 16}        # optional: interp shift per cell
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from interp.errors import ConfigError

SECTIONS = {"name", "models", "tasks", "seeds", "eval", "finetune", "shift", "out"}
EVAL_KEYS = {"shots", "n", "batch_size"}
FT_KEYS = {"method", "n_train", "n_eval", "epochs", "lr", "batch_size"}
SHIFT_KEYS = {"shots", "n_train", "n_pairs", "n_eval", "ft_method", "exact", "n_boot", "epochs",
              "quick"}


@dataclass
class Sweep:
    name: str
    models: list[str]
    tasks: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    eval: dict = field(default_factory=dict)
    finetune: dict | None = None
    shift: dict | None = None
    out: str | None = None


def _list(value, name: str, kind=str) -> list:
    value = value if isinstance(value, list) else [value]
    if not value or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"'{name}' must be a non-empty list of {kind.__name__}")
    return value


def _known(mapping: dict, allowed: set, where: str) -> None:
    unknown = set(mapping) - allowed
    if unknown:
        raise ConfigError(f"unknown key '{sorted(unknown)[0]}' in {where} "
                          f"(allowed: {', '.join(sorted(allowed))})")


def _section(raw: dict, name: str, keys: set) -> dict | None:
    section = raw.get(name)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"'{name}' must be a mapping with keys {', '.join(sorted(keys))}")
    _known(section, keys, f"'{name}'")
    return dict(section)


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep config; every problem is one ConfigError line."""
    import yaml

    from interp.tasks import get_task

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    _known(raw, SECTIONS, str(path))
    for key in ("models", "tasks"):
        if key not in raw:
            raise ConfigError(f"{path}: '{key}' is required")
    tasks = _list(raw["tasks"], "tasks")
    for task in tasks:
        get_task(task)
    ev = _section(raw, "eval", EVAL_KEYS) or {}
    ev["shots"] = sorted(set(_list(ev.get("shots", [0, 4]), "eval.shots", int)))
    if min(ev["shots"]) < 0:
        raise ConfigError("eval.shots must be >= 0")
    ft = _section(raw, "finetune", FT_KEYS)
    if ft is not None:
        ft["n_train"] = _list(ft.get("n_train", [256]), "finetune.n_train", int)
        if ft.setdefault("method", "lora") not in ("lora", "full"):
            raise ConfigError("finetune.method must be lora or full")
    return Sweep(name=str(raw.get("name", path.stem)), models=_list(raw["models"], "models"),
                 tasks=tasks, seeds=_list(raw.get("seeds", [0]), "seeds", int), eval=ev,
                 finetune=ft, shift=_section(raw, "shift", SHIFT_KEYS), out=raw.get("out"))


@dataclass
class Cell:
    kind: str            # eval | finetune | shift
    model: str
    task: str
    seed: int
    shots: int = 0
    n_train: int = 0

    @property
    def key(self) -> str:
        safe = self.model.replace("/", "--")
        extra = {"eval": f"k{self.shots}", "finetune": f"n{self.n_train}", "shift": "shift"}
        return f"{self.kind}__{safe}__{self.task}__s{self.seed}__{extra[self.kind]}"


def cells(sweep: Sweep) -> list[Cell]:
    out = []
    for model in sweep.models:
        for task in sweep.tasks:
            for seed in sweep.seeds:
                out += [Cell("eval", model, task, seed, shots=k) for k in sweep.eval["shots"]]
                if sweep.finetune:
                    out += [Cell("finetune", model, task, seed, n_train=n)
                            for n in sweep.finetune["n_train"]]
                if sweep.shift is not None:
                    out.append(Cell("shift", model, task, seed))
    return out


def run_cell(cell: Cell, sweep: Sweep, out: Path, models: dict, device: str | None = None,
             progress: bool = False) -> list[dict]:
    """Rows of one cell: accuracy rows (eval, finetune) or the shift summary."""
    from interp.models import load_model

    base = {"model": cell.model, "task": cell.task, "seed": cell.seed}
    if cell.kind == "eval":
        from interp.evaluate import evaluate

        model = models.get(cell.model) or models.setdefault(cell.model,
                                                             load_model(cell.model, device=device))
        n = int(sweep.eval.get("n", 64))
        result = evaluate(model, cell.task, shots=[cell.shots], n=n, seed=cell.seed,
                          batch_size=int(sweep.eval.get("batch_size", 8)), progress=progress)
        return [{**base, "kind": "icl", "condition": r.condition, "shots": r.shots, "n_train": 0,
                 "accuracy": r.accuracy, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n}
                for r in result.rows]
    if cell.kind == "finetune":
        from interp.evaluate import evaluate
        from interp.finetune import TrainConfig, train
        from interp.tasks import generate

        ft = sweep.finetune
        keys = {"method", "epochs", "lr", "batch_size"}
        config = TrainConfig(seed=cell.seed, **{k: v for k, v in ft.items() if k in keys})
        model = load_model(cell.model, device=device)
        train(model, generate(cell.task, cell.n_train, seed=cell.seed, split="train"), config,
              out / "models" / cell.key, progress=progress)
        trained = load_model(str(out / "models" / cell.key), device=device)
        result = evaluate(trained, cell.task, shots=[0], n=int(ft.get("n_eval", 64)),
                          seed=cell.seed, progress=progress)
        return [{**base, "kind": "finetune", "condition": r.condition, "shots": 0,
                 "n_train": cell.n_train, "accuracy": r.accuracy, "ci_low": r.ci_low,
                 "ci_high": r.ci_high, "n": r.n} for r in result.rows]
    from interp.pipeline import ShiftConfig, run_shift

    config = ShiftConfig(model=cell.model, task=cell.task, seed=cell.seed, device=device,
                         out=str(out / "shift" / cell.key), progress=progress,
                         **{k: v for k, v in (sweep.shift or {}).items()})
    res = run_shift(config)
    return [{**base, "kind": "shift", "shift_icl": res["point"]["icl"]["shift"],
             "shift_ft": res["point"]["ft"]["shift"], "ci_icl": res["ci95"]["icl"],
             "ci_ft": res["ci95"]["ft"], "ci_diff": res["ci95"]["diff"],
             "noise_floor": res["noise_floor"], "verdict": res["verdict"]}]


def run_sweep(sweep: Sweep, out: str | Path | None = None, device: str | None = None,
              progress: bool = True, only: dict[str, str] | None = None) -> dict[str, Path]:
    """Run every unfinished cell (``only``: keep cells whose fields match), then combine."""
    out = Path(out or sweep.out or f"runs/sweep/{sweep.name}")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells(sweep)
            if all(str(getattr(c, k)) == v for k, v in (only or {}).items())]
    if not todo:
        raise ConfigError(f"no cell matches {only}")
    models: dict[str, Any] = {}
    bar = tqdm(todo, desc=f"sweep {sweep.name}", disable=not progress)
    for cell in bar:
        path = out / "cells" / f"{cell.key}.json"
        if path.is_file():
            continue
        bar.set_postfix_str(cell.key)
        rows = run_cell(cell, sweep, out, models, device, progress=False)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cell": cell.__dict__, "rows": rows}, indent=1))
        tmp.replace(path)  # a cell file exists only once it is complete
    return combine(out)


def combine(out: str | Path) -> dict[str, Path]:
    """``results.csv`` (accuracy rows), ``shift.csv`` and ``figures.html`` from every cell file."""
    import pandas as pd

    from interp.plots import write_page

    out = Path(out)
    rows = [r for p in sorted((out / "cells").glob("*.json"))
            for r in json.loads(p.read_text())["rows"]]
    acc = pd.DataFrame([r for r in rows if r["kind"] in ("icl", "finetune")])
    shift = pd.DataFrame([r for r in rows if r["kind"] == "shift"])
    written = {}
    if len(acc):
        acc = acc.sort_values(["model", "task", "kind", "condition", "shots", "n_train", "seed"])
        acc.to_csv(out / "results.csv", index=False)
        written["results"] = out / "results.csv"
    if len(shift):
        shift.to_csv(out / "shift.csv", index=False)
        written["shift"] = out / "shift.csv"
    figures = sweep_figures(acc, shift)
    if figures:
        written["figures"] = write_page(out / "figures.html", f"Sweep: {out.name}", figures)
    return written


def sweep_figures(acc, shift) -> list:
    """Accuracy vs shots (ICL), accuracy vs training samples (FT), shift(ICL) vs shift(FT)."""
    import plotly.express as px

    figs = []
    if len(acc):
        mean = (acc.groupby(["model", "task", "kind", "condition", "shots", "n_train"],
                            as_index=False)["accuracy"].mean())
        icl = mean[mean["kind"] == "icl"]
        if len(icl):
            fig = px.line(icl, x="shots", y="accuracy", color="task", line_dash="condition",
                          facet_col="model", markers=True, title="ICL: accuracy vs shots")
            fig.update_yaxes(range=[0, 1])
            figs.append(fig)
        ft = mean[mean["kind"] == "finetune"]
        if len(ft):
            fig = px.line(ft, x="n_train", y="accuracy", color="task", line_dash="condition",
                          facet_col="model", markers=True, log_x=True,
                          title="Fine-tuning: zero-shot accuracy vs training samples")
            fig.update_yaxes(range=[0, 1])
            figs.append(fig)
    if len(shift):
        s = shift.groupby(["model", "task"], as_index=False)[["shift_icl", "shift_ft"]].mean()
        long = s.melt(id_vars=["model", "task"], value_vars=["shift_icl", "shift_ft"],
                      var_name="condition", value_name="shift")
        fig = px.bar(long, x="task", y="shift", color="condition", barmode="group",
                     facet_col="model", title="Circuit shift against base zero-shot: ICL vs FT")
        figs.append(fig)
    return figs
