"""Fine-tuning throughput and peak memory, full and LoRA. Prints one JSON object per run.

CPU: the embedded model through :func:`interp.finetune.train` on expression examples (the real
workload). GPU (when present): a randomly initialised model of Qwen2.5-0.5B's shape in bf16 on
``--seq-len`` token batches, with the achieved fraction of the GPU's bf16 dense peak (MFU,
counting 6 N FLOPs per token for full fine-tuning and 4 N for LoRA, whose frozen weights get no
weight gradients, plus attention).
Each run happens in a fresh process so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peak import Peak  # noqa: E402

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def cpu_run(method: str, steps: int, batch_size: int) -> dict:
    from interp.finetune import TrainConfig, train
    from interp.models import load_model
    from interp.tasks import generate

    model = load_model("smollm2-135m", device="cpu")
    examples = generate("expression", steps * batch_size, seed=0, split="train")
    config = TrainConfig(method=method, epochs=1, batch_size=batch_size, warmup_steps=1)
    with Peak("cpu") as peak:
        summary = train(model, examples, config, out=None, progress=False)
    return {"model": "smollm2-135m", "device": "cpu", "method": method, "steps": steps,
            "batch_size": batch_size, "tokens_per_s": summary["tokens_per_s"],
            "seconds": round(peak.seconds, 2), "peak_mib": peak.mib}


def gpu_run(method: str, steps: int, batch_size: int, seq_len: int) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    attn = "flash_attention_2" if _has("flash_attn") else "sdpa"
    config = Qwen2Config(**QWEN25_05B, attn_implementation=attn)
    model = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    if method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), device="cuda")

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with Peak("cuda") as peak:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    tokens_per_s = steps * batch_size * seq_len / peak.seconds
    L, d = config.num_hidden_layers, config.hidden_size
    per_token = (6 if method == "full" else 4) * n_params + 12 * L * d * seq_len
    name = torch.cuda.get_device_name()
    peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    mfu = per_token * tokens_per_s / (peak_tflops * 1e12) if peak_tflops else None
    return {"model": "random Qwen2.5-0.5B shape", "device": name, "attn": attn,
            "method": method, "steps": steps, "batch_size": batch_size, "seq_len": seq_len,
            "tokens_per_s": round(tokens_per_s, 1), "peak_mib": peak.mib,
            "mfu": round(mfu, 3) if mfu else None}


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024, help="GPU runs only")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        if args.target == "gpu":
            row = gpu_run(args.worker, args.steps, args.batch_size, args.seq_len)
        else:
            row = cpu_run(args.worker, args.steps, args.batch_size)
        with open(args.save, "w") as f:
            json.dump(row, f)
        return
    targets = ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])
    for target in targets:
        for method in args.methods.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "row.json")
                batch = args.batch_size if target == "cpu" else max(args.batch_size, 8)
                subprocess.run([sys.executable, __file__, "--worker", method, "--target", target,
                                "--steps", str(args.steps), "--batch-size", str(batch),
                                "--seq-len", str(args.seq_len), "--save", path], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                with open(path) as f:
                    print(json.dumps({"bench": "finetune", **json.load(f)}), flush=True)


if __name__ == "__main__":
    main()
