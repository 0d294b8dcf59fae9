import json

import pytest
import torch
from safetensors.torch import load_file

from interp.engine import encode
from interp.errors import StaleResultsError
from interp.finetune import TrainConfig, TrainingError, layer_causal_loss, train, train_gd
from interp.finetune.data import IGNORE, encode_example
from interp.finetune.layer_causal import causal_lm_loss, kv_parameters
from interp.models import load_model
from interp.prompts import build_prompt
from interp.tasks import generate

TINY = "tiny-random-llama"


@pytest.fixture(scope="module")
def examples():
    return generate("boolean", 24, seed=0, split="train")


def test_training_sequence_is_what_the_evaluator_reads(examples):
    tok = load_model(TINY).tokenizer
    ex = examples[0]
    seq = encode_example(tok, ex)
    prompt = build_prompt(ex, (), True)
    head = encode(tok, prompt.prefix, True) + encode(tok, prompt.query, False)
    answer = encode(tok, " " + ex.target, False) + [tok.eos_token_id]
    assert seq.ids == head + answer
    assert seq.labels == [IGNORE] * len(head) + answer
    assert encode_example(tok, ex, loss_on="text").labels == seq.ids


def _weights(path):
    return load_file(path / "model.safetensors")


def test_killed_run_resumes_to_the_same_weights(tmp_path, examples):
    config = TrainConfig(method="lora", epochs=1, batch_size=4, checkpoint_every=2, lr=1e-3,
                         lora_r=4, lora_dropout=0.1, warmup_steps=1)
    whole = train(load_model(TINY), examples, config, tmp_path / "whole", progress=False)
    assert whole["steps"] == 6

    def kill(step, loss):
        if step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(load_model(TINY), examples, config, tmp_path / "killed", progress=False,
              on_step=kill)
    progress = json.loads((tmp_path / "killed/checkpoint/progress.json").read_text())
    assert progress["step"] == 2
    resumed = train(load_model(TINY), examples, config, tmp_path / "killed", progress=False)
    assert resumed["resumed_from"] == 2
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    base = load_model(TINY).hf.state_dict()
    assert any(not torch.equal(a[k], base[k]) for k in a if k in base)  # it did train
    log = [json.loads(line) for line in (tmp_path / "killed/train_log.jsonl").open()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # step 3 was redone after the kill
    # the output directory is a model spec; LoRA is merged into it, the adapter kept
    reloaded = load_model(str(tmp_path / "whole"))
    assert (tmp_path / "whole/adapter/adapter_config.json").is_file()
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert reloaded.hf(tokens).logits.abs().sum() > 0
    # a different configuration refuses the old run instead of mixing runs
    other = TrainConfig(method="lora", epochs=1, batch_size=4, lr=5e-4, lora_r=4)
    with pytest.raises(StaleResultsError, match="other settings"):
        train(load_model(TINY), examples, other, tmp_path / "killed", progress=False)
    # the same run again is a no-op that leaves the files as they are
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "killed").iterdir()}
    again = train(load_model(TINY), examples, config, tmp_path / "killed", progress=False)
    assert again["skipped"] and again["final_loss"] == resumed["final_loss"]
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "killed").iterdir()}


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, examples):
    config = TrainConfig(method="full", epochs=1, batch_size=4, checkpoint_every=1, lr=1e30,
                         warmup_steps=0, clip=0, schedule="constant")
    with pytest.raises(TrainingError, match="loss became"):
        train(load_model(TINY), examples, config, tmp_path / "run", progress=False)
    progress = json.loads((tmp_path / "run/checkpoint/progress.json").read_text())
    assert progress["step"] >= 1
    saved = load_file(tmp_path / "run/checkpoint/trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values()) or progress["step"] >= 1


def _layer0_kv_grad(model, ids, loss_fn):
    hf = model.hf
    for p in hf.parameters():
        p.requires_grad_(False)
    params = [p for _, p in kv_parameters(hf) if ".layers.0." in _]
    for p in params:
        p.requires_grad_(True)
    grads = torch.autograd.grad(loss_fn(hf, ids), params)
    return torch.cat([g.flatten() for g in grads])


def test_layer_causal_gd_shields_shallow_layers_from_deeper_ones():
    model = load_model(TINY)
    ids = torch.tensor([model.tokenizer("True and False or True = True").input_ids])
    before = {m: _layer0_kv_grad(model, ids, fn) for m, fn in
              (("lcgd", layer_causal_loss), ("gd-kv", causal_lm_loss))}
    with torch.no_grad():  # perturb a deeper layer
        model.hf.model.layers[2].mlp.down_proj.weight.mul_(3.0)
        model.hf.model.layers[1].self_attn.o_proj.weight.add_(0.05)
    after = {m: _layer0_kv_grad(model, ids, fn) for m, fn in
             (("lcgd", layer_causal_loss), ("gd-kv", causal_lm_loss))}
    assert torch.equal(before["lcgd"], after["lcgd"])
    assert before["lcgd"].abs().sum() > 0
    assert (before["gd-kv"] - after["gd-kv"]).abs().max() > 1e-6


def test_layer_causal_loss_matches_per_layer_early_exit_reference():
    """Value: the sum over layers of each layer output's next-token loss through the final norm
    and unembedding. Gradient of layer l's key weights: that of layer l's own loss alone (deeper
    losses must not reach it), computed here from an ordinary forward with hooks."""
    import torch.nn.functional as F

    model = load_model(TINY)
    hf = model.hf
    ids = torch.tensor([model.tokenizer("True and False or True = True").input_ids])
    keys = [layer.self_attn.k_proj.weight for layer in hf.model.layers]
    for w in keys:
        w.requires_grad_(True)
    outs = []
    handles = [layer.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(
        o, tuple) else o)) for layer in hf.model.layers]
    hf(input_ids=ids)
    for h in handles:
        h.remove()
    per_layer = [F.cross_entropy(hf.lm_head(hf.model.norm(o))[0, :-1], ids[0, 1:]) for o in outs]
    ref_grads = [torch.autograd.grad(loss, w, retain_graph=True)[0]
                 for loss, w in zip(per_layer, keys)]
    ours = layer_causal_loss(hf, ids)
    assert ours.item() == pytest.approx(sum(l.item() for l in per_layer), rel=1e-5)
    grads = torch.autograd.grad(ours, keys)
    for ref, got in zip(ref_grads, grads):
        assert ref.abs().max() > 0
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["gd-kv", "lcgd"])
def test_gd_baselines_update_only_keys_and_values(tmp_path, method):
    model = load_model(TINY)
    before = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    demos = generate("boolean", 4, seed=1, split="demo")
    summary = train_gd(model, demos, method, lr=1e-2, out=tmp_path / method, progress=False)
    assert summary["steps"] == 4
    changed = {n for n, p in model.hf.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("k_proj" in n or "v_proj" in n for n in changed)
    assert len(changed) == 2 * model.n_layers
    assert load_model(str(tmp_path / method)).n_layers == model.n_layers


def test_answer_loss_equals_the_model_loss(examples):
    from interp.finetune.data import collate
    from interp.finetune.trainer import answer_loss

    model = load_model(TINY)
    tok = model.tokenizer
    for loss_on in ("answer", "text"):
        batch = collate([encode_example(tok, ex, loss_on=loss_on) for ex in examples[:4]],
                        tok.pad_token_id)
        with torch.no_grad():
            ours, ref = answer_loss(model.hf, batch), model.hf(**batch).loss
        assert torch.allclose(ours, ref, atol=1e-5)
