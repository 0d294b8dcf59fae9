import subprocess
import sys

import pytest

from interp.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "interp.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_help_and_version():
    out = run("--help")
    assert out.returncode == 0
    for sub in ("data", "eval", "finetune", "patch", "shift", "align"):
        assert sub in out.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("interp ")


@pytest.mark.parametrize("args,needle", [
    (["eval", "--model", "tiny-random-llama", "--task", "nope"], "unknown task"),
    (["eval", "--model", "not-a-model", "--task", "boolean"], "unknown model spec"),
    (["eval", "--model", "someone/missing-model", "--task", "boolean"], "offline"),
    (["data", "--task", "parity", "--n", "3", "--knob", "length=2", "--out", "x.jsonl"],
     "out of range"),
    (["data", "--task", "parity", "--n", "3", "--knob", "bogus=1", "--out", "x.jsonl"], "no knob"),
    (["eval", "--model", "tiny-random-llama", "--task", "boolean", "--shots", "0,999"],
     "pool holds only"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run(*args)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_data_is_byte_identical_for_same_seed(tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for path, seed in ((a, 3), (b, 3), (c, 4)):
        assert main(["data", "--task", "expression", "--n", "50", "--seed", str(seed),
                     "--out", str(path)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_eval_writes_results_and_keeps_earlier_tasks(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--quiet", "eval", "--model", "tiny-random-llama", "--task", "boolean,parity",
                 "--shots", "0,2", "--n", "6", "--out", str(out)])
    assert code == 0
    for name in ("accuracy.csv", "eval_boolean.json", "predictions_parity.jsonl"):
        assert (out / name).is_file()
    assert "boolean" in capsys.readouterr().out
    # a later bad request fails cleanly and leaves the written results alone
    before = (out / "eval_boolean.json").read_bytes()
    assert main(["eval", "--model", "tiny-random-llama", "--task", "boolean", "--shots", "500",
                 "--n", "2", "--out", str(out)]) == 2
    assert (out / "eval_boolean.json").read_bytes() == before
