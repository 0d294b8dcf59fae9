"""Nothing silent, nothing lost: one writer per output directory, locks that are never empty,
atomic files on a full disk, inputs that do not fit refused (never cut), damaged or unsupported
inputs named, sizes checked before work, partial studies marked as partial."""

import errno
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from interp.cli import main
from interp.errors import ContextLengthError, DiskFullError, ModelSpecError

TINY = "tiny-random-llama"


def run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "interp", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env={**os.environ, **(env or {})})


def _one_line_exit_2(out):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    lines = [l for l in out.stderr.strip().splitlines()       # upstream notices are not ours
             if not l.startswith(("warning:", "[transformers]"))]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_a_second_writer_is_refused_with_the_holders_name(tmp_path):
    from interp.locks import OUT_LOCK

    out = tmp_path / "busy"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / OUT_LOCK).write_text(json.dumps({"holder": "interp shift", "pid": sleeper.pid,
                                                "host": os.uname().nodename, "time": 9e12,
                                                "started": "now"}))
        line = _one_line_exit_2(run("eval", "--model", TINY, "--task", "boolean", "--n", "2",
                                    "--shots", "0", "--out", str(out)))
        assert "in use by interp shift" in line and str(sleeper.pid) in line
    finally:
        sleeper.kill()
        sleeper.wait()
    # its holder is gone: the lock is stale and taken over (with a warning), the run completes
    done = run("--quiet", "eval", "--model", TINY, "--task", "boolean", "--n", "2", "--shots",
               "0", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "taking over the stale lock" in done.stderr
    assert not (out / OUT_LOCK).exists()          # released at exit


def test_the_same_process_may_take_its_own_directory_twice(tmp_path):
    from interp.files import check_writable

    check_writable(tmp_path / "mine")
    check_writable(tmp_path / "mine")


def test_a_lock_is_created_with_its_content(tmp_path, monkeypatch):
    import interp.locks as locks

    seen = []
    real_link = os.link

    def link(src, dst):
        seen.append(Path(src).read_text())      # what a reader of the lock would see
        return real_link(src, dst)

    monkeypatch.setattr(locks.os, "link", link)
    assert locks.try_lock(tmp_path / "cell.lock", "sweep cell") is None
    assert json.loads(seen[0])["pid"] == os.getpid()
    assert locks.try_lock(tmp_path / "cell.lock", "sweep cell")["pid"] == os.getpid()


def test_a_full_disk_leaves_no_partial_file_and_says_so(tmp_path, monkeypatch):
    from interp import files

    target = tmp_path / "page.html"
    target.write_text("<html>old</html>")

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"no space left on {tmp_path} while writing "
                                            "page.html"):
        with files.atomic_path(target) as tmp:
            tmp.write_text("<html>partial")
            full(tmp)
    assert target.read_text() == "<html>old</html>"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_html_pages_are_written_atomically(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    from interp import files
    from interp.plots import write_page

    calls = []
    real = files.atomic_path
    monkeypatch.setattr(files, "atomic_path", lambda p: (calls.append(p), real(p))[1])
    page = write_page(tmp_path / "figures.html", "t", [go.Figure()])
    assert calls and page.read_text().rstrip().endswith("</html>")


def test_a_prompt_longer_than_the_context_is_refused(tiny):
    import torch

    from interp.engine import PrefixRunner, check_length, context_length, prefix_cache

    limit = context_length(tiny)
    with pytest.raises(ContextLengthError, match=f"more than the model's context of {limit}"):
        prefix_cache(tiny, torch.ones(1, limit + 1, dtype=torch.long))
    runner = PrefixRunner(tiny, "", use_cache=False)
    with pytest.raises(ContextLengthError):
        runner.forward([[1] * (limit + 5)])
    check_length(tiny, limit)          # exactly the context fits


def test_patch_with_too_many_shots_is_refused_not_cut(tmp_path):
    line = _one_line_exit_2(run("patch", "--model", TINY, "--task", "boolean", "--shots", "150",
                                "--n", "2", "--out", str(tmp_path / "p")))
    assert "tokens" in line and "context" in line
    assert not (tmp_path / "p" / "scores.safetensors").exists()


def test_a_shift_run_whose_prompts_do_not_fit_is_refused_before_training(tmp_path):

    began = time.perf_counter()
    line = _one_line_exit_2(run("shift", "--model", TINY, "--task", "boolean", "--shots", "150",
                                "--n-train", "32", "--n-eval", "4", "--n-pairs", "4", "--out",
                                str(tmp_path / "s")))
    assert "context" in line and "base-icl" in line
    assert not (tmp_path / "s" / "ft").exists()            # nothing was trained
    assert time.perf_counter() - began < 120


@pytest.mark.parametrize("args,needle", [
    (["patch", "--model", TINY, "--task", "boolean", "--n", "1000000000"], "at most"),
    (["data", "--task", "boolean", "--n", "1000000000"], "at most"),
    (["shift", "--model", TINY, "--task", "boolean", "--n-pairs", "5000000"], "at most"),
])
def test_oversized_requests_are_refused_at_once(args, needle, tmp_path):
    assert needle in _one_line_exit_2(run(*args, cwd=tmp_path))


@pytest.mark.parametrize("args,needle", [
    # within the count limits, beyond the machine: memory (per-pair scores and resamples) ...
    (["patch", "--model", TINY, "--task", "boolean", "--n", "1000000", "--n-boot", "100000"],
     "would need about"),
    # ... and time (lower bounds, against INTERP_MAX_HOURS)
    (["finetune", "--model", TINY, "--task", "boolean", "--n-train", "1000000", "--epochs",
      "1000"], "would take at least"),
    (["shift", "--model", TINY, "--task", "boolean", "--n-pairs", "4096", "--n-train",
      "1000000", "--epochs", "100"], "would take at least"),
    (["align", "--model", TINY, "--task", "boolean", "--seeds", "100000", "--n", "1000"],
     "would take at least"),
])
def test_requests_beyond_the_machine_are_refused_in_seconds(args, needle, tmp_path):
    began = time.perf_counter()
    line = _one_line_exit_2(run(*args, "--out", str(tmp_path / "o"), cwd=tmp_path))
    assert needle in line and ("GiB" in line or " h " in line)
    assert time.perf_counter() - began < 60
    assert not [p for p in (tmp_path / "o").rglob("*") if p.is_file()
                and not p.name.startswith(".interp")]


def test_the_time_limit_is_the_users_to_set(tmp_path):
    args = ["eval", "--model", TINY, "--task", "boolean", "--n", "4", "--shots", "0,2",
            "--out", str(tmp_path / "e")]
    line = _one_line_exit_2(run(*args, env={"INTERP_MAX_HOURS": "0.000001"}))
    assert "would take at least" in line and "INTERP_MAX_HOURS" in line
    assert "INTERP_MAX_HOURS must be" in _one_line_exit_2(run(*args, env={
        "INTERP_MAX_HOURS": "soon"}))          # 0 lifting the limit: test_budget_rules


def test_budget_rules(monkeypatch):
    from interp import budget
    from interp.errors import ResourceError

    monkeypatch.setattr(budget, "available_memory", lambda: 10 * budget.GIB)
    monkeypatch.setenv("INTERP_MAX_HOURS", "2")
    assert budget.check(budget.Need("x", 9 * budget.GIB, 7000)).seconds == 7000
    with pytest.raises(ResourceError, match=r"x would need about 11.0 GiB.*10.0 GiB"):
        budget.check(budget.Need("x", 11 * budget.GIB))
    with pytest.raises(ResourceError, match=r"x would take at least 2.1 h.*allows 2.0 h"):
        budget.check(budget.Need("x", 0, 7500))
    monkeypatch.setenv("INTERP_MAX_HOURS", "0")
    budget.check(budget.Need("x", 0, 1e12))
    total = budget.Need("a", 1, 2) + budget.Need("b", 3, 4)
    assert (total.what, total.bytes, total.seconds) == ("a", 4, 6)


def test_running_out_of_memory_anyway_is_one_line(monkeypatch, capsys):
    import interp.commands.data as data

    def boom(args):
        raise MemoryError()
    monkeypatch.setattr(data, "run", boom)
    assert main(["data", "--task", "boolean", "--n", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interp: error: ran out of memory")


def test_bootstrap_intervals_are_computed_in_bounded_chunks(monkeypatch):
    import torch

    from interp import stats

    values = torch.randn(7, 5, 24, generator=torch.Generator().manual_seed(1))
    whole = stats.percentile_ci(stats.bootstrap_means(values, 300, seed=3))
    monkeypatch.setattr(stats, "CHUNK_BYTES", 8 * 300 * 4)     # 4 rows at a time
    low, high = stats.bootstrap_ci(values, n_boot=300, seed=3)
    assert torch.equal(low, whole[0]) and torch.equal(high, whole[1])
    scaled = stats.bootstrap_ci(values, n_boot=300, seed=3, statistic=lambda m: 2 * m + 1)
    assert torch.allclose(scaled[0], 2 * whole[0] + 1)


def test_sweep_configs_are_checked_whole_before_any_cell(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("models: [tiny-random-llama]\ntasks: [boolean]\neval: {n: 4}\n"
                      "finetune: {n_train: [-16]}\n")
    line = _one_line_exit_2(run("sweep", str(config), "--out", str(tmp_path / "s")))
    assert "finetune.n_train[0]: must be >= 1, got -16" in line
    assert not list((tmp_path / "s").rglob("*.json"))
    config.write_text("models: [tiny-random-llama]\ntasks: [boolean]\nshift: {n_pairs: 2}\n")
    assert "shift: n_pairs" in _one_line_exit_2(run("sweep", str(config), "--out",
                                                    str(tmp_path / "s")))


def test_an_interrupted_sweep_says_it_is_partial(tmp_path, monkeypatch):
    import interp.sweep as sweep

    config = tmp_path / "two.yaml"
    config.write_text("models: [tiny-random-llama]\ntasks: [boolean, parity]\n"
                      "eval: {n: 2, shots: [0]}\n")
    grid = sweep.load_sweep(config)
    real, calls = sweep.run_cell, []

    def second_interrupted(cell, *args, **kwargs):
        calls.append(cell.key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cell, *args, **kwargs)
    monkeypatch.setattr(sweep, "run_cell", second_interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(grid, tmp_path / "s", progress=False)
    status = json.loads((tmp_path / "s" / "status.json").read_text())
    assert (status["complete"], status["cells_done"], status["cells_total"]) == (False, 1, 2)
    assert status["missing"] == [calls[1]] and not (tmp_path / "s" / "results.csv").exists()
    monkeypatch.setattr(sweep, "run_cell", real)
    sweep.run_sweep(grid, tmp_path / "s", progress=False)
    assert json.loads((tmp_path / "s" / "status.json").read_text())["complete"] is True
    assert (tmp_path / "s" / "results.csv").exists()


def test_invalid_utf8_pairs_are_named_with_their_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b'{"clean": "a", "corrupt": "b", "answer": " c", "foil": " d"}\n'
                      b'{"clean": "\xff\xfe"}\n')
    line = _one_line_exit_2(run("patch", "--model", TINY, "--pairs", str(pairs), "--out",
                                str(tmp_path / "p")))
    assert "pairs.jsonl:2: not valid UTF-8" in line


def test_unsupported_and_damaged_models_are_named(tmp_path, tiny):
    from interp.models import load_model

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelSpecError, match="model type 'bert' is not supported; supported: "):
        load_model(str(bert))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny.source_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelSpecError, match="model.safetensors is damaged or truncated"):
        load_model(str(broken))
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)
    with pytest.raises(ModelSpecError, match="cut.gguf cannot be read as a GGUF model"):
        load_model(str(gguf))


def test_an_unusable_model_cache_is_said_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _one_line_exit_2(run("eval", "--model", "tiny-random-llama", "--task", "boolean",
                                "--n", "2", "--out", str(tmp_path / "e"),
                                env={"INTERP_CACHE": str(blocker / "below")}))
    assert "model cache" in line and "INTERP_CACHE" in line


def test_a_damaged_checkpoint_names_what_to_delete(tmp_path):
    out = tmp_path / "ft"
    args = ["--quiet", "finetune", "--model", TINY, "--task", "boolean", "--n-train", "8",
            "--batch-size", "4", "--max-steps", "2", "--checkpoint-every", "1", "--n-eval", "2",
            "--out", str(out)]
    assert main(args) == 0
    ckpt = out / "checkpoint"
    assert (ckpt / "progress.json").is_file()
    (ckpt / "trainable.safetensors").write_bytes(b"\x00" * 10)
    (out / "model.safetensors").unlink(missing_ok=True)
    (out / "train_config.json").unlink(missing_ok=True)
    line = _one_line_exit_2(run(*args))
    assert "is damaged" in line and "delete" in line


def test_an_interrupted_study_marks_its_tables_partial(tmp_path, monkeypatch):
    import interp.study as study

    calls = {"n": 0}

    def stop_after_first(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = study.run_shift
    monkeypatch.setattr(study, "run_shift", stop_after_first)
    shift = replace(study.study_template(), quick=True, demo_seeds=1, ft_seeds=1, progress=False)
    config = study.StudyConfig(models=[TINY], tasks=["boolean", "parity"], shift=shift,
                               out=str(tmp_path / "st"))
    with pytest.raises(KeyboardInterrupt):
        study.run_study(config)
    record = json.loads((tmp_path / "st" / "study.json").read_text())
    assert record["complete"] is False and record["cells_total"] == 2
    assert "id='partial'" in (tmp_path / "st" / "study.html").read_text()


def test_a_full_disk_while_saving_the_model_cache_is_one_line(tmp_path, monkeypatch, tiny):
    from interp import files, models

    monkeypatch.setattr(files.shutil, "disk_usage", lambda d: type("U", (), {"free": 0})())

    class Full:
        def save_pretrained(self, path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")

    with pytest.raises(DiskFullError, match="no space left on .* while writing the model cache"):
        models._save_atomically(tmp_path / "cache" / "m", Full(), Full())
    assert not list((tmp_path / "cache").iterdir())        # no partial cache entry
