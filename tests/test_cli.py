import subprocess
import sys

import pytest
import torch
from clirun import run_in_process

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
    (["patch", "--model", "tiny-random-llama", "--task", "boolean", "--component", "necks"],
     "unknown component"),
    (["patch", "--model", "tiny-random-llama", "--pairs", "missing.jsonl"], "no such pairs file"),
    (["patch", "--model", "tiny-random-llama", "--task", "nope"], "unknown task"),
    (["patch", "--model", "tiny-random-llama", "--task", "boolean", "--ablate", "half"],
     "--ablate"),
    (["finetune", "--model", "tiny-random-llama", "--method", "sgd"], "invalid choice"),
    (["finetune", "--model", "tiny-random-llama", "--task", "nope"], "unknown task"),
    (["finetune", "--model", "tiny-random-llama", "--n-train", "0"], "--n-train"),
    (["finetune", "--model", "tiny-random-llama", "--method", "lcgd", "--task",
      "boolean,parity"], "one task"),
    (["finetune", "--model", "tiny-random-llama", "--batch-size", "0"], "--batch-size"),
    (["patch", "--model", "tiny-random-llama", "--task", "boolean", "--source-model",
      "tiny-random-llama", "--method", "attribution"], "activation patching"),
    (["patch", "--model", "tiny-random-llama", "--task", "boolean", "--source-model",
      "no/such-model"], "cannot load model"),
    (["sweep", "missing.yaml"], "sweep config not found"),
    (["align", "--model", "tiny-random-llama", "--task", "expression"], "closed answer set"),
    (["align", "--model", "tiny-random-llama", "--task", "boolean", "--method", "adam"],
     "unknown method"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run_in_process(*args)
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


def test_patch_writes_scores_matching_the_library(tmp_path, capsys):
    import json

    import torch
    from safetensors.torch import load_file
    from transformer_lens import patching as tlp

    from interp.analysis.metrics import logit_diff
    from interp.analysis.pairs import tokenize_pairs
    from interp.models import load_model

    rows = [{"clean": "The cat sat on the mat and", "corrupt": "The dog sat on the rug and",
             "answer": " a", "foil": " the"},
            {"clean": "One two three four five six seven", "answer": " eight",
             "corrupt": "One two three four five six ten", "foil": " nine"}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "patch"
    assert main(["--quiet", "patch", "--model", "tiny-random-llama", "--pairs", str(pairs),
                 "--component", "heads,mlp", "--method", "activation", "--dla",
                 "--ablate", "zero", "--n-boot", "50", "--out", str(out)]) == 0
    scores = load_file(out / "scores.safetensors")
    summary = json.loads((out / "summary.json").read_text())
    model = load_model("tiny-random-llama")
    assert scores["heads"].shape == (model.n_layers, model.n_heads)
    assert {"heads_normalized", "mlp", "dla_heads", "ablate_zero_heads"} <= set(scores)
    # the saved head scores are what transformer_lens.patching returns on the same pairs
    tokens = tokenize_pairs(model, rows)
    for i, t in enumerate(tokens):
        metric = logit_diff([t["answer_id"]], [t["foil_id"]])
        _, cache = model.bridge.run_with_cache(t["clean"][None])
        ref = tlp.get_act_patch_attn_head_out_all_pos(
            model.bridge, t["corrupt"][None], cache, lambda logits: metric(logits).mean())
        assert torch.allclose(scores["heads_per_pair"][..., i], ref, atol=1e-4)
    assert torch.allclose(scores["heads"], scores["heads_per_pair"].mean(-1))
    base = summary["baselines"]
    assert base["clean"]["ci95"][0] <= base["clean"]["mean"] <= base["clean"]["ci95"][1]
    assert (out / "patching.html").stat().st_size > 100_000
    assert "largest effects (normalised)" in capsys.readouterr().out


def test_finetune_sweep_trains_one_model_per_size(tmp_path, capsys):
    import json

    out = tmp_path / "ft"
    assert main(["--quiet", "finetune", "--model", "tiny-random-llama", "--task", "boolean",
                 "--method", "full", "--n-train", "8,16", "--epochs", "1", "--batch-size", "4",
                 "--n-eval", "4", "--out", str(out)]) == 0
    rows = json.loads((out / "finetune_accuracy.json").read_text())["rows"]
    assert [r["n_train"] for r in rows] == [8, 16]
    for n, steps in ((8, 2), (16, 4)):
        config = json.loads((out / f"n{n}" / "train_config.json").read_text())
        assert config["steps"] == steps and config["config"]["method"] == "full"
        assert (out / f"n{n}" / "model.safetensors").is_file()
        assert (out / f"n{n}" / "eval_boolean.json").is_file()
    printed = capsys.readouterr().out
    assert "before" in printed and "after n=16" in printed


def test_align_writes_table_with_methods_and_baselines(tmp_path, capsys):
    import json

    out = tmp_path / "align"
    assert main(["--quiet", "align", "--model", "tiny-random-llama", "--task", "boolean",
                 "--demos", "2", "--seeds", "1", "--n", "3", "--out", str(out)]) == 0
    result = json.loads((out / "alignment.json").read_text())
    settings = [r["setting"] for r in result["rows"]]
    assert settings == ["gd-kv", "lcgd", "random update", "untrained (gd-kv)",
                        "embeddings-only (gd-kv)"]
    for row in result["rows"]:
        assert -1.0 <= row["SimAOU"] <= 1.0
    assert (out / "alignment.html").stat().st_size > 100_000
    printed = capsys.readouterr().out
    assert "SimAOU_norm" in printed and "lcgd" in printed


def test_cross_model_patch_command(tmp_path):
    import json

    from safetensors.torch import load_file

    from interp.analysis.cross_model import cross_model_patch
    from interp.analysis.pairs import task_pairs, tokenize_pairs
    from interp.finetune import train_gd
    from interp.models import load_model
    from interp.tasks import generate

    ft = load_model("tiny-random-llama")
    train_gd(ft, generate("boolean", 4, seed=2, split="demo"), "gd-kv", lr=0.05,
             out=tmp_path / "ft", progress=False)
    out = tmp_path / "cross"
    assert main(["--quiet", "patch", "--model", "tiny-random-llama", "--source-model",
                 str(tmp_path / "ft"), "--task", "boolean", "--n", "3", "--n-boot", "20",
                 "--out", str(out)]) == 0
    scores = load_file(out / "scores.safetensors")
    assert {"source_into_model/heads", "model_into_source/heads_normalized"} <= set(scores)
    base, source = load_model("tiny-random-llama"), load_model(str(tmp_path / "ft"))
    tokens = tokenize_pairs(base, task_pairs("boolean", 3, tokenizer=base.tokenizer))
    ref = cross_model_patch(base, source, tokens, "heads")
    assert torch.allclose(scores["source_into_model/heads_per_pair"], ref.scores, atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == str(tmp_path / "ft") and (out / "patching.html").is_file()


def test_shift_options_and_sweep_keys_come_from_the_config_fields():
    import argparse
    from dataclasses import dataclass, fields

    from interp.cli import build_parser
    from interp.commands.shift import config_from
    from interp.options import add_settings, sweep_keys
    from interp.shift.config import ShiftConfig, setting

    options = [f for f in fields(ShiftConfig) if "help" in f.metadata]
    config = config_from(build_parser().parse_args(["shift", "--n-pairs", "8", "--no-probes",
                                                    "--dose-shots", "1,3"]))
    assert (config.n_pairs, config.probes, config.dose_shots) == (8, False, (1, 3, 4))
    untouched = {f.name: f.default for f in options} | {"n_pairs": 8, "probes": False}
    assert {k: getattr(config, k) for k in untouched if k != "dose_shots"} == {
        k: v for k, v in untouched.items() if k != "dose_shots"}
    assert set(sweep_keys(ShiftConfig)) == {f.name for f in options if f.metadata["sweep"]}

    @dataclass
    class Extended(ShiftConfig):       # an option added in one place: its field
        extra: int = setting(3, "an option added in one place", type=int)

    parser = argparse.ArgumentParser()
    add_settings(parser, Extended)
    assert parser.parse_args(["--extra", "5"]).extra == 5 and sweep_keys(Extended)["extra"] is int


def test_quick_leaves_the_users_config_as_given():
    from interp.shift.config import ShiftConfig

    config = ShiftConfig(model="tiny-random-llama", quick=True, shots=4, n_pairs=16)
    quick = config.resolved()
    assert (config.shots, config.n_pairs, config.n_train) == (4, 16, 128)
    assert (quick.shots, quick.n_pairs, quick.n_train, quick.dose_shots) == (4, 6, 32, (1, 2, 4))
    assert quick.resolved() == quick
    two = ShiftConfig(model="tiny-random-llama", quick=True, shots=2)   # a given count is kept
    assert two.resolved().shots == 2 and ShiftConfig(quick=True).resolved().shots == 4
    assert ShiftConfig(model="tiny-random-llama").resolved().n_pairs == 16
