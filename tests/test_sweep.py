import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from interp.cli import main
from interp.sweep import cells, load_sweep

ROOT = Path(__file__).parent.parent

TINY = """
name: tiny
models: [tiny-random-llama]
tasks: [boolean]
seeds: [0]
eval: {shots: [0, 2], n: 4}
finetune: {n_train: [8], n_eval: 4, batch_size: 4}
shift: {quick: true}
"""


def test_shipped_configs_are_valid():
    configs = sorted((ROOT / "experiments" / "configs").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"cpu-check", "smollm2-135m", "gemma3-270m",
                                          "qwen2.5-gpu"}
    grid = load_sweep(ROOT / "experiments" / "configs" / "smollm2-135m.yaml")
    # 5 tasks x 3 seeds x (6 shot counts + 3 training sizes + 1 shift cell)
    assert len(cells(grid)) == 5 * 3 * 10


@pytest.mark.parametrize("text,message", [
    ("models: [tiny-random-llama]\ntasks: [nope]\n", "unknown task"),
    ("models: [tiny-random-llama]\ntasks: [boolean]\neval: {shots: [0, 2], m: 3}\n",
     "unknown key 'm' in 'eval'"),
    ("tasks: [boolean]\n", "'models' is required"),
    ("models: [tiny-random-llama]\ntasks: [boolean\n", "not valid YAML"),
    ("models: [tiny-random-llama]\ntasks: [boolean]\neval: {shots: [0, two]}\n", "eval.shots"),
])
def test_bad_configs_exit_2_with_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["--quiet", "sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_sweep_runs_skips_finished_cells_and_combines(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), str(config), "--out", str(out),
           "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    files = sorted(p for p in (out / "cells").glob("*.json") if ".meta." not in p.name)
    assert len(files) == 2 + 1 + 1   # two shot counts, one training size, one shift cell
    assert not list((out / "adapters").rglob("model.safetensors"))   # adapters, not merged
    assert list((out / "adapters").rglob("adapter_config.json"))
    table = pd.read_csv(out / "results.csv")
    icl = table[table["kind"] == "icl"]
    assert sorted(set(icl["shots"])) == [0, 2] and set(icl["condition"]) == {"pattern", "control"}
    # the combined table is exactly the cells' rows
    cell_rows = [r for p in files for r in json.loads(p.read_text())["rows"]
                 if r["kind"] != "shift"]
    assert len(table) == len(cell_rows)
    assert sorted(table["accuracy"]) == pytest.approx(sorted(r["accuracy"] for r in cell_rows))
    shift = pd.read_csv(out / "shift.csv")
    from interp.shift.verdict import RULES

    assert len(shift) == 1 and shift["verdict_code"][0] in {code for code, _ in RULES.values()}
    assert not {"seconds", "host"} & set(table.columns)      # timings live in cells.csv
    assert {"seconds", "host"} <= set(pd.read_csv(out / "cells.csv").columns)
    page = (out / "figures.html").read_text()
    assert page.count('class="plotly-graph-div"') >= 2
    # a second run finds every cell done: nothing recomputed, same table
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    start = time.perf_counter()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps
    assert time.perf_counter() - start < 60
    assert pd.read_csv(out / "results.csv").equals(table)
    assert "pattern" in second.stdout
