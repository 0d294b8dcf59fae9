"""The environment is part of the result: the lock files satisfy pyproject.toml, the engine
refuses to run when a cached or hooked forward disagrees with the plain forward, data that cannot
come from a model reading its input stops a run, and provenance names every distribution."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement

from interp.arch import layers, unwrap

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("lock-cpu.txt", "lock-cuda.txt")


def _pins(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / lock).read_text()
    return {re.sub(r"[-_.]+", "-", n).lower(): v
            for n, v in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.M)}


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_satisfies_pyproject_ranges(lock):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(lock)
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert len(pins) > len(wanted)   # transitive dependencies are locked too
    for line in wanted:
        req = Requirement(line)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} is not locked in {lock}"
        assert req.specifier.contains(pins[name].split("+")[0], prereleases=True), \
            f"{lock}: {name}=={pins[name]} outside {req.specifier}"
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            assert line.rstrip().endswith("\\"), f"{line!r} has no hash"


def test_the_lock_keeps_the_versions_the_readme_was_measured_with():
    readme = (ROOT / "README.md").read_text()
    for lock in LOCKS:
        pins = _pins(lock)
        for name in ("transformers", "transformer-lens", "peft", "accelerate"):
            assert f"{name} {pins[name]}" in readme, (lock, name)


def test_makefile_names_each_lock_file():
    makefile = (ROOT / "Makefile").read_text()
    for lock in (*LOCKS, "lock-models.txt"):
        assert f"requirements/{lock}" in makefile


def _drop_cache(module, args, kwargs):
    kwargs.pop("cache", None)
    kwargs["past_key_values"] = None
    return args, kwargs


@pytest.fixture
def fresh_tiny():
    from interp.models import load_model

    return load_model("tiny-random-llama", device="cpu")


def test_engine_check_catches_a_model_that_drops_its_cache(fresh_tiny):
    from interp.engine import check_engine, prefix_cache
    from interp.errors import EngineCheckError

    check_engine(fresh_tiny)   # a plain model passes
    fresh_tiny.bridge
    for layer in layers(fresh_tiny.hf):
        unwrap(layer).self_attn.register_forward_pre_hook(_drop_cache, with_kwargs=True)
    ids = torch.tensor([[1, 5, 9, 13]])
    with pytest.raises(EngineCheckError) as err:
        prefix_cache(fresh_tiny, ids)
    message = str(err.value)
    assert message.startswith("engine check failed: with transformers ")
    assert "differs from the full forward by" in message and "make install" in message
    assert "\n" not in message


def test_engine_check_catches_hooks_that_change_the_forward(fresh_tiny, monkeypatch):
    from contextlib import contextmanager

    from interp.engine import check_engine
    from interp.errors import EngineCheckError

    bridge = fresh_tiny.bridge
    real_hooks = bridge.hooks

    @contextmanager
    def noisy_hooks(fwd_hooks=()):
        shift = [("blocks.0.hook_resid_pre", lambda act, hook: act + 0.5)]
        with real_hooks(fwd_hooks=list(fwd_hooks) + shift):
            yield

    monkeypatch.setattr(bridge, "hooks", noisy_hooks)
    with pytest.raises(EngineCheckError, match="no-op hooks differs from the unhooked"):
        check_engine(fresh_tiny)


def test_engine_check_runs_once_per_engine_state(fresh_tiny, monkeypatch):
    import interp.engine as engine

    calls = []
    real = engine._probe
    monkeypatch.setattr(engine, "_probe", lambda m: (calls.append(m.has_bridge), real(m)))
    ids = torch.tensor([[1, 5, 9, 13]])
    for _ in range(3):
        engine.prefix_cache(fresh_tiny, ids)
    fresh_tiny.bridge
    for _ in range(3):
        engine.forward(fresh_tiny, ids)
    assert calls == [False, True]


def test_engine_check_passes_on_the_embedded_model(smol):
    import time

    from interp.engine import check_engine
    from interp.models import load_model

    model = load_model("smollm2-135m", device="cpu")   # its own copy: the bridge rewrites it
    model.bridge
    start = time.perf_counter()
    check_engine(model)   # raises on a mismatch
    assert len(model.engine_checked) == 1
    assert time.perf_counter() - start < 30   # a sanity bound; the cost is in benchmarks/


def test_cli_prints_the_engine_error_as_one_line_with_exit_2(tmp_path):
    code = (
        "import sys, interp.models as m\n"
        "from interp.arch import layers, unwrap\n"
        "def drop(module, args, kwargs):\n"
        "    kwargs.pop('cache', None); kwargs['past_key_values'] = None; return args, kwargs\n"
        "def broken(hf):\n"
        "    for layer in layers(hf):\n"
        "        unwrap(layer).self_attn.register_forward_pre_hook(drop, with_kwargs=True)\n"
        "m.pass_cache_to_bridge = broken\n"
        "from interp.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", code, "patch", "--model", "tiny-random-llama",
                          "--task", "boolean", "--n", "2", "--out", str(tmp_path / "p"), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert lines[0].startswith("interp: error: engine check failed: with transformers "), lines


def test_identical_metrics_on_distinct_prompts_stop_the_run():
    from interp.errors import DegenerateDataError
    from interp.shift.conditions import PairSet
    from interp.shift.measure import check_spread

    pairs = PairSet("counterfactual", ["a", "b", "c", "d"], [[1, 2], [1, 3], [1, 4], [1, 5]],
                    [[2, 2], [2, 3], [2, 4], [2, 5]], [7, 8, 7, 8], [8, 7, 8, 7], [{}] * 4)
    # two values, one per answer: what a model that ignores its prompt gives
    with pytest.raises(DegenerateDataError, match="ignored its input"):
        check_spread(torch.tensor([0.12, -0.25, 0.12, -0.25]), pairs, "base-zs")
    check_spread(torch.tensor([0.12, -0.25, 0.31, -0.25]), pairs, "base-zs")
    same_prompts = PairSet("counterfactual", ["a", "b"], [[1, 2], [1, 2]], [[2, 2], [2, 2]],
                           [7, 7], [8, 8], [{}] * 2)
    check_spread(torch.tensor([0.5, 0.5]), same_prompts, "base-zs")   # same prompt: allowed


def test_provenance_names_every_distribution_and_the_lock(tmp_path):
    from importlib.metadata import version

    from interp.provenance import write_provenance

    record = json.loads(write_provenance(tmp_path, {"seed": 3}).read_text())
    assert record["distributions"]["torch"] == version("torch")
    assert record["distributions"]["transformer-lens"] == version("transformer-lens")
    assert len(record["distributions"]) > 50
    lock = record["lock"]
    assert lock["file"].startswith("requirements/lock-") and len(lock["sha256"]) == 64
    assert lock["matches"] is (not lock["differences"])
    assert isinstance(record["native_bf16"], bool)


def test_a_version_differing_from_the_lock_is_recorded_and_warned(monkeypatch, capsys):
    import interp.provenance as prov

    monkeypatch.delenv("INTERP_ALLOW_UNLOCKED", raising=False)
    installed = prov.installed_distributions()
    monkeypatch.setattr(prov, "installed_distributions",
                        lambda: {**installed, "transformers": "5.25.0"})
    prov.lock_status.cache_clear()
    try:
        status = prov.lock_status()
    finally:
        prov.lock_status.cache_clear()
    assert status["matches"] is False
    assert status["differences"]["transformers"]["installed"] == "5.25.0"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "transformers 5.25.0 (locked " in err[0]
