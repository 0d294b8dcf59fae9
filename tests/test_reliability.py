"""Faults and bad input: stale settings are recomputed or refused, never mixed; truncated stage
files are recovered; every bad value ends in one line and exit 2 (unexpected errors: one line,
exit 1); every JSON written is strict; provenance records the versions."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from clirun import run_in_process

from interp.cli import main
from interp.files import atomic_path, read_json, write_json
from interp.shift import ShiftConfig, run_shift

TINY = "tiny-random-llama"


def _strict(path: Path):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "interp", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


@pytest.mark.parametrize("args,needle", [
    (["eval", "--model", TINY, "--task", "boolean", "--device", "tpu"], "unknown device"),
    (["eval", "--model", TINY, "--task", "boolean", "--device", "cuda:7"], "cuda:7"),
    (["eval", "--model", TINY, "--task", "boolean", "--n", "0"], "--n"),
    (["finetune", "--model", TINY, "--lr", "-0.1"], "--lr"),
    (["finetune", "--model", TINY, "--lora-r", "0"], "--lora-r"),
    (["finetune", "--model", TINY, "--max-steps", "0"], "--max-steps"),
    (["finetune", "--model", TINY, "--batch-size", "0"], "--batch-size"),
    (["finetune", "--model", TINY, "--lr", "nan"], "--lr"),
    (["shift", "--model", TINY, "--n-pairs", "2"], "--n-pairs"),
    (["shift", "--model", TINY, "--task", "boolean", "--knob", "groups=9"], "out of range"),
    (["study", "--models", TINY, "--tasks", "boolean,nope"], "unknown task"),
    (["sweep", "bad.yaml"], "eval.n"),
    (["patch", "--model", TINY, "--pairs", "empty_answer.jsonl"], "'answer' is empty"),
    (["patch", "--model", TINY, "--pairs", "number_answer.jsonl"], "must be a string"),
    (["patch", "--model", TINY, "--pairs", "same_answer.jsonl"], "the same"),
    (["data", "--task", "boolean", "--n", "3", "--out", "adir"], "is a directory"),
    (["eval", "--model", TINY, "--task", "boolean", "--out", "afile"], "not a directory"),
    (["shift", "--model", TINY, "--quick", "--out", "afile/sub"], "not writable"),
    (["gaps", "--models", TINY, "--tasks", "boolean,parity", "--knob", "cities=4"], "one task"),
])
def test_bad_values_are_one_line_and_exit_2(args, needle, tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("models: [tiny-random-llama]\ntasks: [boolean]\n"
                                       "eval: {shots: [0], n: two}\n")
    row = {"clean": "a b", "corrupt": "a c", "answer": " x", "foil": " y"}
    for name, change in (("empty_answer", {"answer": "  "}), ("number_answer", {"answer": 3}),
                         ("same_answer", {"foil": "x"})):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({**row, **change}) + "\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    out = run_in_process(*args)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert needle in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_unexpected_errors_are_one_line_exit_1(monkeypatch, capsys):
    import interp.commands.data as data

    def boom(args):
        raise RuntimeError("disk on fire\nsecond line")
    monkeypatch.setattr(data, "run", boom)
    assert main(["data", "--task", "boolean", "--out", "x.jsonl"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "RuntimeError: disk on fire" in err
    assert "--debug" in err


def test_atomic_writes_leave_the_old_file_whole(tmp_path):
    path = write_json(tmp_path / "x.json", {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text('{"a": 2, "b"')     # half written, then the process dies
            raise RuntimeError
    assert read_json(path) == {"a": 1} and not list(tmp_path.glob(".x.json.*"))
    write_json(tmp_path / "nan.json", {"x": float("nan"), "y": [1.0, float("inf")]})
    assert _strict(tmp_path / "nan.json") == {"x": None, "y": [1.0, None]}
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "cut.json").write_text('{"a": ')
    assert read_json(tmp_path / "cut.json") is None


@pytest.fixture(scope="module")
def shift_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shift-faults")
    run_shift(ShiftConfig(model=TINY, task="boolean", quick=True, out=str(out), progress=False))
    return out


@pytest.mark.parametrize("stage", ["accuracy.json", "dose_accuracy.json", "scores.json",
                                   "scores.safetensors", "dose.safetensors", "probes.json",
                                   "explorer.json", "ft/ft-zs-0/updates.json",
                                   "ft/ft-zs-0/update@4.safetensors"])
def test_each_truncated_stage_file_is_recomputed(shift_dir, stage, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(shift_dir, copy)
    data = (copy / stage).read_bytes()
    (copy / stage).write_bytes(data[: len(data) // 3])                  # a crash mid-write
    results = run_shift(ShiftConfig(model=TINY, task="boolean", quick=True, out=str(copy),
                                    progress=False))
    name = stage.split(".")[0]
    if "/" not in stage:
        assert name not in results["reused_stages"]
    assert (copy / stage).stat().st_size >= len(data) * 0.5
    _strict(copy / "results.json")


def test_every_json_written_is_strict_and_provenance_has_versions(shift_dir):
    for path in shift_dir.rglob("*.json"):
        _strict(path)
    prov = _strict(shift_dir / "provenance.json")
    for name in ("interp", "python", "torch", "transformers", "transformer-lens", "peft",
                 "accelerate"):
        assert prov["versions"][name], name
    assert prov["models"]["base"]["spec"] == TINY and prov["models"]["base"]["weights_hash"]
    assert prov["models"]["base"]["device"] == "cpu" and prov["seeds"]["seed"] == 0
    assert prov["started"] <= prov["ended"]


SWEEP = """
name: stale
models: [tiny-random-llama]
tasks: [boolean]
seeds: [0]
eval: {shots: [0], n: %d}
"""


def test_sweep_with_changed_settings_never_mixes_cells(tmp_path):
    config, out = tmp_path / "s.yaml", tmp_path / "out"
    config.write_text(SWEEP % 4)
    assert main(["--quiet", "sweep", str(config), "--out", str(out)]) == 0
    first = pd.read_csv(out / "results.csv")
    assert set(first["n"]) == {4}
    config.write_text(SWEEP % 6)                    # another evaluation size: new cells
    assert main(["--quiet", "sweep", str(config), "--out", str(out)]) == 0
    second = pd.read_csv(out / "results.csv")
    assert set(second["n"]) == {6} and len(second) == len(first)
    for path in out.rglob("*.json"):
        _strict(path)
    assert _strict(out / "provenance.json")["versions"]["torch"]


def test_sweep_shards_and_submitit_give_the_sequential_table(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text(SWEEP.replace("shots: [0]", "shots: [0, 1, 2]") % 4)
    seq, sharded, submitted = tmp_path / "seq", tmp_path / "sharded", tmp_path / "submitit"
    assert main(["--quiet", "sweep", str(config), "--out", str(seq)]) == 0
    assert main(["--quiet", "sweep", str(config), "--out", str(sharded), "--shard", "1/2"]) == 0
    assert not (sharded / "results.csv").exists()          # written when every cell exists
    assert main(["--quiet", "sweep", str(config), "--out", str(sharded), "--shard", "2/2"]) == 0
    assert main(["--quiet", "sweep", str(config), "--out", str(submitted), "--launcher",
                 "submitit", "--cluster", "local", "--jobs", "2"]) == 0
    table = pd.read_csv(seq / "results.csv")
    pd.testing.assert_frame_equal(pd.read_csv(sharded / "results.csv"), table)
    pd.testing.assert_frame_equal(pd.read_csv(submitted / "results.csv"), table)
    assert main(["sweep", str(config), "--out", str(seq), "--list-cells"]) == 0


def test_a_locked_cell_is_left_to_its_worker(tmp_path):
    from interp.sweep import _lock

    lock = tmp_path / "cell.lock"
    assert _lock(lock)
    assert not _lock(lock)                                 # held by a live process
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
    assert _lock(lock)                                     # a day-old lock is taken over


def test_finetune_rerun_is_a_no_op_and_other_settings_are_refused(tmp_path):
    out = tmp_path / "ft"
    args = ["--quiet", "finetune", "--model", TINY, "--task", "boolean", "--n-train", "8",
            "--batch-size", "4", "--n-eval", "2", "--out", str(out)]
    assert main(args) == 0
    config = (out / "train_config.json").read_text()
    weights = (out / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "train_config.json").read_text() == config       # no NaN loss rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == weights
    record = _strict(out / "train_config.json")
    assert record["finished"] and record["resumed_from"] == 0 and record["data_hash"]
    other = run("finetune", "--model", TINY, "--task", "parity", "--n-train", "8",
                "--batch-size", "4", "--n-eval", "2", "--out", str(out))
    assert other.returncode == 2 and "other settings" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_a_stage_computed_on_other_demonstrations_is_stale(tmp_path):
    from interp.errors import StaleResultsError
    from interp.shift.stages import Stages

    calls = []
    first = Stages(tmp_path, inputs={"demos": "aaaa"}).json(
        "accuracy", {"n_eval": 4}, lambda: calls.append(1) or {"v": 1})
    again = Stages(tmp_path, inputs={"demos": "aaaa"}).json(
        "accuracy", {"n_eval": 4}, lambda: calls.append(2) or {"v": 2})
    assert first == again == {"v": 1} and calls == [1]          # same inputs: reused
    with pytest.raises(StaleResultsError):                      # other demonstrations: refused
        Stages(tmp_path, inputs={"demos": "bbbb"}).json("accuracy", {"n_eval": 4},
                                                        lambda: {"v": 3})
    forced = Stages(tmp_path, force=True, inputs={"demos": "bbbb"}).json(
        "accuracy", {"n_eval": 4}, lambda: {"v": 3})
    assert forced == {"v": 3}
