"""Paper-style sweeps: a YAML grid of models x tasks x seeds x (ICL shots | training sizes |
shift cells), one JSON file per finished cell, one combined table and the figures of the paper's
main results: accuracy vs shots, accuracy vs training samples, shift(ICL) vs shift(FT).

Config (``experiments/configs/*.yaml``)::

    name: smollm2-135m
    models: [smollm2-135m]
    tasks: [boolean, parity]
    seeds: [0]
    eval: {shots: [0, 1, 2, 4, 8, 16], n: 64}           # ICL sweep (pattern and control)
    finetune: {method: lora, n_train: [64, 256], n_eval: 64, epochs: 1}   # optional
    shift: {shots: 4, n_train: 128, n_pairs: 16}        # optional: interp shift per cell

A cell's file name carries a hash of the settings it depends on, so a changed config computes
new cells and never mixes them with old ones; the combined table holds the current grid's cells
only, and is written once every cell exists. Cells can be split over machines (``shard``: a
deterministic partition, a lock file per cell so no cell is computed twice) or submitted as a
submitit job array; every way gives the same ``results.csv``. Fine-tuning cells keep their LoRA
adapters, not merged models.
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from interp.errors import ConfigError, MissingDependencyError
from interp.files import fingerprint, read_json, write_csv, write_json
from interp.locks import try_lock
from interp.options import MAX_COUNT, sweep_keys

SECTIONS = {"name", "models", "tasks", "seeds", "eval", "finetune", "shift", "out"}
EVAL_KEYS = {"shots", "n", "batch_size"}
FT_KEYS = {"method", "n_train", "n_eval", "epochs", "lr", "batch_size"}
_TYPES = {"n": int, "batch_size": int, "n_eval": int, "epochs": int, "lr": float, "method": str,
          "shots": int, "n_train": int}


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


def _section(raw: dict, name: str, keys: set | dict) -> dict | None:
    """Section ``name`` of a sweep config, its keys and values checked (``keys``: the allowed
    keys, or the allowed keys with their value types)."""
    section = raw.get(name)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"'{name}' must be a mapping with keys {', '.join(sorted(keys))}")
    unknown = set(section) - set(keys)
    if unknown:
        raise ConfigError(f"unknown key '{sorted(unknown)[0]}' in '{name}' "
                          f"(allowed: {', '.join(sorted(keys))})")
    for key, value in section.items():
        kind = (keys if isinstance(keys, dict) else _TYPES).get(key)
        if kind is None:
            continue
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            _check_value(f"{name}.{key}" + ("" if i is None else f"[{i}]"), item, kind,
                         0 if key == "shots" else 1)
    return dict(section)


def _check_value(field_name: str, value, kind, minimum: int = 1) -> None:
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{field_name}: must be a {kind.__name__}, got {value!r}")
    if kind is int and value < minimum:
        raise ConfigError(f"{field_name}: must be >= {minimum}, got {value!r}")
    if kind is float and value <= 0:
        raise ConfigError(f"{field_name}: must be > 0, got {value!r}")
    if kind is int and value > MAX_COUNT:
        raise ConfigError(f"{field_name}: must be at most {MAX_COUNT:,} (a larger request would "
                          f"not fit in memory), got {value!r}")


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
    unknown = set(raw) - SECTIONS
    if unknown:
        raise ConfigError(f"unknown key '{sorted(unknown)[0]}' in {path} "
                          f"(allowed: {', '.join(sorted(SECTIONS))})")
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
    sweep = Sweep(name=str(raw.get("name", path.stem)), models=_list(raw["models"], "models"),
                  tasks=tasks, seeds=_list(raw.get("seeds", [0]), "seeds", int), eval=ev,
                  finetune=ft, shift=_section(raw, "shift", _shift_keys()), out=raw.get("out"))
    _check_shift(sweep)
    return sweep


def _shift_keys() -> dict[str, type]:
    from interp.shift.config import ShiftConfig

    return sweep_keys(ShiftConfig)


def _check_shift(sweep: Sweep) -> None:
    """The whole shift section, validated for every task before the first cell runs."""
    if sweep.shift is None:
        return
    from interp.shift.config import ShiftConfig

    for task in sweep.tasks:
        try:
            ShiftConfig(model=sweep.models[0], task=task, progress=False, **sweep.shift)
        except ConfigError as exc:
            raise ConfigError(f"shift: {exc}") from None


@dataclass
class Cell:
    kind: str            # eval | finetune | shift
    model: str
    task: str
    seed: int
    shots: int = 0
    n_train: int = 0
    settings: dict = field(default_factory=dict)   # what the cell's result depends on

    @property
    def key(self) -> str:
        safe = self.model.replace("/", "--")
        extra = {"eval": f"k{self.shots}", "finetune": f"n{self.n_train}", "shift": "shift"}
        return (f"{self.kind}__{safe}__{self.task}__s{self.seed}__{extra[self.kind]}__"
                f"{fingerprint(self.settings)[:8]}")


def cells(sweep: Sweep) -> list[Cell]:
    out = []
    ev = {k: v for k, v in sweep.eval.items() if k != "shots"}
    for model in sweep.models:
        for task in sweep.tasks:
            for seed in sweep.seeds:
                base = {"model": model, "task": task, "seed": seed}
                out += [Cell("eval", model, task, seed, shots=k,
                             settings={**base, "kind": "eval", "shots": k, "n": ev.get("n", 64),
                                       "batch_size": ev.get("batch_size", 8)})
                        for k in sweep.eval["shots"]]
                if sweep.finetune:
                    ft = {k: v for k, v in sweep.finetune.items() if k != "n_train"}
                    out += [Cell("finetune", model, task, seed, n_train=n,
                                 settings={**base, "kind": "finetune", "n_train": n, **ft})
                            for n in sweep.finetune["n_train"]]
                if sweep.shift is not None:
                    out.append(Cell("shift", model, task, seed,
                                    settings={**base, "kind": "shift", **sweep.shift}))
    return out


def shard_of(items: list, shard: tuple[int, int] | None) -> list:
    """Shard ``i`` of ``n`` (1-based): every n-th cell of the grid sorted by key."""
    if shard is None:
        return items
    i, n = shard
    ordered = sorted(items, key=lambda c: c.key)
    return [c for j, c in enumerate(ordered) if j % n == i - 1]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes I/N (e.g. 1/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text}: needs 1 <= I <= N")
    return i, n


def run_cell(cell: Cell, sweep: Sweep, out: Path, models: dict, device: str | None = None,
             progress: bool = False, tracker=None) -> list[dict]:
    """Rows of one cell: accuracy rows (eval, finetune) or the shift summary."""
    from interp.evaluate import evaluate
    from interp.models import load_model

    base = {"model": cell.model, "task": cell.task, "seed": cell.seed}
    if cell.kind == "eval":
        model = models.get(cell.model) or models.setdefault(cell.model,
                                                             load_model(cell.model, device=device))
        result = evaluate(model, cell.task, shots=[cell.shots], n=cell.settings["n"],
                          seed=cell.seed, batch_size=cell.settings["batch_size"],
                          progress=progress, n_validation=0)
        return [{**base, "kind": "icl", "condition": r.condition, "shots": r.shots, "n_train": 0,
                 "accuracy": r.accuracy, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n,
                 "chance": r.chance, "majority": r.majority} for r in result.rows]
    if cell.kind == "finetune":
        from interp.finetune import TrainConfig, train
        from interp.tasks import generate

        ft = sweep.finetune
        keys = {"method", "epochs", "lr", "batch_size"}
        config = TrainConfig(seed=cell.seed, **{k: v for k, v in ft.items() if k in keys})
        model = load_model(cell.model, device=device)
        train(model, generate(cell.task, cell.n_train, seed=cell.seed, split="train"), config,
              out / "adapters" / cell.key, progress=progress, save_merged=False, force=True,
              tracker=tracker)
        result = evaluate(model, cell.task, shots=[0], n=int(ft.get("n_eval", 64)),
                          seed=cell.seed, progress=progress, n_validation=0)
        return [{**base, "kind": "finetune", "condition": r.condition, "shots": 0,
                 "n_train": cell.n_train, "accuracy": r.accuracy, "ci_low": r.ci_low,
                 "ci_high": r.ci_high, "n": r.n, "chance": r.chance, "majority": r.majority}
                for r in result.rows]
    from interp.shift import ShiftConfig, run_shift

    config = ShiftConfig(model=cell.model, task=cell.task, seed=cell.seed, device=device,
                         out=str(out / "shift" / cell.key), progress=progress,
                         **{k: v for k, v in (sweep.shift or {}).items()})
    res = run_shift(config)
    e = res["effects"]["icl_minus_ft"]
    return [{**base, "kind": "shift", "shift_icl": res["shift"]["base-icl"]["estimate"],
             "shift_ft": res["shift"]["ft-zs"]["estimate"],
             "effect_icl_minus_ft": e["estimate"],
             "ci_low": (e["ci95"] or [None, None])[0], "ci_high": (e["ci95"] or [None, None])[1],
             "verdict_code": res["verdict_code"], "verdict_rule": res["verdict_rule"]}]


def _lock(path: Path) -> bool:
    """Take the cell's lock; False when another worker holds a live one."""
    return try_lock(path, "sweep cell") is None


def run_sweep(sweep: Sweep, out: str | Path | None = None, device: str | None = None,
              progress: bool = True, only: dict[str, str] | None = None,
              shard: tuple[int, int] | None = None, report_to: str | None = None
              ) -> dict[str, Path]:
    """Run the unfinished cells (of ``shard``, matching ``only``), then combine when every cell
    of the grid exists."""
    from interp.tracking import start as start_tracker

    out = Path(out or sweep.out or f"runs/sweep/{sweep.name}")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    grid = [c for c in cells(sweep) if all(str(getattr(c, k)) == v for k, v in
                                           (only or {}).items())]
    if not grid:
        raise ConfigError(f"no cell matches {only}")
    todo = shard_of(grid, shard)
    models: dict[str, Any] = {}
    tracker = start_tracker(report_to, out, f"sweep-{sweep.name}", asdict(sweep))
    bar = tqdm(todo, desc=f"sweep {sweep.name}", disable=not progress)
    for step, cell in enumerate(bar, 1):
        path = out / "cells" / f"{cell.key}.json"
        if read_json(path) is not None:
            continue
        lock = path.with_suffix(".lock")
        if not _lock(lock):
            continue                      # another worker is computing this cell
        try:
            bar.set_postfix_str(cell.key)
            began = time.perf_counter()
            rows = run_cell(cell, sweep, out, models, device, progress=False, tracker=tracker)
            write_json(path, {"cell": asdict(cell), "rows": rows})
            meta = {"key": cell.key, "host": socket.gethostname(),
                    "seconds": round(time.perf_counter() - began, 2)}
            write_json(out / "cells" / f"{cell.key}.meta.json", meta)
            write_status(out, grid)
            if tracker is not None:
                tracker.log({f"cells/{r['kind']}/{r.get('condition', 'shift')}/accuracy":
                             r["accuracy"] for r in rows if "accuracy" in r}, step)
        finally:
            lock.unlink(missing_ok=True)
    if tracker is not None:
        tracker.finish()
    return combine(out, grid)


def done(out: Path, grid: list[Cell]) -> list[Cell]:
    return [c for c in grid if read_json(out / "cells" / f"{c.key}.json") is not None]


def write_status(out: Path, grid: list[Cell]) -> list[Cell]:
    """``status.json``: whether every cell of the grid is written (``complete``), and which are
    missing; rewritten after each cell, so an interrupted sweep says it is partial."""
    finished = done(out, grid)
    keys = {c.key for c in finished}
    write_json(out / "status.json", {"complete": len(finished) == len(grid),
                                     "cells_done": len(finished), "cells_total": len(grid),
                                     "missing": [c.key for c in grid if c.key not in keys]})
    return finished


def combine(out: str | Path, grid: list[Cell]) -> dict[str, Path]:
    """``results.csv`` (accuracy rows), ``shift.csv``, ``cells.csv`` (timings and hosts) and
    ``figures.html`` from the grid's cell files, once every cell exists (``status.json`` says
    whether it does)."""
    import pandas as pd

    from interp.plots import write_page
    from interp.report.sweep import sweep_figures

    out = Path(out)
    finished = write_status(out, grid)
    if len(finished) < len(grid):
        return {"missing": len(grid) - len(finished)}
    rows = [r for c in sorted(grid, key=lambda c: c.key)
            for r in read_json(out / "cells" / f"{c.key}.json")["rows"]]
    acc = pd.DataFrame([r for r in rows if r["kind"] in ("icl", "finetune")])
    shift = pd.DataFrame([r for r in rows if r["kind"] == "shift"])
    written: dict[str, Any] = {}
    if len(acc):
        acc = acc.sort_values(["model", "task", "kind", "condition", "shots", "n_train", "seed"],
                              ignore_index=True)
        written["results"] = write_csv(out / "results.csv", acc)
    if len(shift):
        written["shift"] = write_csv(out / "shift.csv", shift)
    meta = [read_json(out / "cells" / f"{c.key}.meta.json") or {"key": c.key} for c in grid]
    written["cells"] = write_csv(out / "cells.csv", pd.DataFrame(meta))
    figures = sweep_figures(acc, shift)
    if figures:
        written["figures"] = write_page(out / "figures.html", f"Sweep: {out.name}", figures)
    return written


def submit(sweep: Sweep, config_path: str, out: Path, cluster: str, n_jobs: int,
           device: str | None, partition: str | None, gpus_per_job: int, timeout_min: int,
           only: dict | None, report_to: str | None) -> dict[str, Path]:
    """Run the sweep as a submitit job array of ``n_jobs`` shards (``cluster``: local, slurm or
    debug), wait for the jobs, then combine."""
    try:
        import submitit
    except ImportError as exc:
        raise MissingDependencyError("--launcher submitit needs submitit: pip install submitit"
                                     ) from exc
    executor = submitit.AutoExecutor(folder=str(out / "submitit"), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": timeout_min}
    if cluster == "slurm":
        params.update(slurm_partition=partition, gpus_per_node=gpus_per_job)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    jobs = executor.map_array(_shard_job, [config_path] * n_jobs, [str(out)] * n_jobs,
                              list(range(1, n_jobs + 1)), [n_jobs] * n_jobs, [device] * n_jobs,
                              [only] * n_jobs, [report_to] * n_jobs)
    for job in jobs:
        job.result()
    grid = [c for c in cells(sweep) if all(str(getattr(c, k)) == v for k, v in
                                           (only or {}).items())]
    return combine(out, grid)


def _shard_job(config_path: str, out: str, i: int, n: int, device, only, report_to):
    sweep = load_sweep(config_path)
    run_sweep(sweep, out, device, progress=False, only=only, shard=(i, n),
              report_to=report_to)
    return i
