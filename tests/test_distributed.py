"""Multi-process fine-tuning on CPU: `interp finetune` under `accelerate launch` with 2
processes (DDP, full and LoRA; FSDP2, full) gives the weight update of one process with the same
global batch, resumes after a kill, and only the main process evaluates and writes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interp.models import load_model

TINY = "tiny-random-llama"
KILLER = Path(__file__).parent / "kill_after_step.py"
pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None and not (
    Path(sys.executable).parent / "accelerate").exists(), reason="accelerate CLI missing")


def _accelerate() -> str:
    return str(Path(sys.executable).parent / "accelerate")


def _finetune_args(out: Path, method: str, steps: int = 3) -> list[str]:
    return ["finetune", "--model", TINY, "--task", "boolean", "--method", method, "--n-train",
            "16", "--batch-size", "4", "--max-steps", str(steps), "--warmup", "0",
            "--lr", "1e-3", "--checkpoint-every", "1", "--n-eval", "4", "--out", str(out)]


def _launch(args: list[str], mode: str, script: str | None = None, timeout: int = 600):
    flags = {"ddp": ["--cpu", "--num_processes", "2"],
             "fsdp": ["--num_processes", "2", "--use_fsdp", "--fsdp_version", "2",
                      "--fsdp_auto_wrap_policy", "NO_WRAP"]}[mode]
    target = [script] if script else ["-m", "interp.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([_accelerate(), "launch", "--num_machines", "1", "--mixed_precision",
                           "no", "--dynamo_backend", "no", *flags, *target, "--quiet", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _single(args: list[str]):
    return subprocess.run([sys.executable, "-m", "interp.cli", "--quiet", *args],
                          capture_output=True, text=True, timeout=600)


def _update_gap(a: Path, b: Path) -> float:
    """|W_a - W_b| / |W_a - W_base| over every weight (relative difference of the updates)."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    base = load_model(TINY).hf.state_dict()
    num = sum(float((wa[k] - wb[k]).pow(2).sum()) for k in wa)
    den = sum(float((wa[k] - base[k]).pow(2).sum()) for k in wa if k in base)
    assert den > 0, "nothing trained"
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    for method in ("full", "lora"):
        done = _single(_finetune_args(root / method, method))
        assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.parametrize("mode,method", [("ddp", "full"), ("ddp", "lora"), ("fsdp", "full")])
def test_two_processes_give_the_single_process_update(single, tmp_path, mode, method):
    out = tmp_path / f"{mode}-{method}"
    done = _launch(_finetune_args(out, method), mode)
    assert done.returncode == 0, done.stderr[-4000:]
    assert _update_gap(out, single / method) <= 1e-2
    # only the main process evaluates (one line before, one after) and writes
    assert done.stdout.count("zero-shot accuracy") == 2, done.stdout
    assert (out / "eval_boolean.json").is_file() and (out / "provenance.json").is_file()
    log = [line for line in (out / "train_log.jsonl").read_text().splitlines() if line]
    assert len(log) == 3


def test_killed_two_process_run_resumes_to_the_same_weights(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _launch(_finetune_args(whole, "full", steps=4), "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    dead = _launch(_finetune_args(killed, "full", steps=4), "ddp", script=str(KILLER))
    assert dead.returncode != 0
    assert (killed / "checkpoint" / "progress.json").is_file()
    again = _launch(_finetune_args(killed, "full", steps=4), "ddp")
    assert again.returncode == 0, again.stderr[-3000:]
    record = (killed / "train_config.json").read_text()
    assert '"resumed_from": 2' in record
    a, b = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
