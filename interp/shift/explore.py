"""Attention of every head under every condition, stored compactly for the report's explorer.

For a few stored test pairs (clean and corrupt prompts), each condition's attention from the
prompt's last ``rows`` positions to every key position is kept for every head. Keys are
collapsed where a prompt is long: the instruction header and each demonstration become one key
each (their attention summed), the query keeps its tokens. Values are quantised to 1/255 and
stored as one base64 string per condition and prompt (``[layer * head, rows, keys]`` bytes).
"""

from __future__ import annotations

import base64

import torch

from interp.engine import capture, encode, forward
from interp.prompts import DEMO_SEP, format_demo, header_text
from interp.shift.conditions import Condition, PairSet
from interp.shift.measure import ConditionRunner

ROWS = 8


def segments(tokenizer, task: str, demos) -> list[tuple[str, int]]:
    """(label, end position) of the header and of each demonstration in the prefix tokens."""
    text, out = "", []
    head = header_text(task, True)
    if head:
        text = head + DEMO_SEP
        out.append(("[instruction]", len(encode(tokenizer, text, first=True))))
    for i, d in enumerate(demos, 1):
        text += format_demo(d) + DEMO_SEP
        out.append((f"[demo {i}]", len(encode(tokenizer, text, first=True))))
    return out


def _collapse(att: torch.Tensor, bounds: list[tuple[str, int]], n_prefix: int) -> torch.Tensor:
    """``att [heads, rows, T]`` -> ``[heads, rows, len(bounds) + T - n_prefix]``."""
    parts, start = [], 0
    for _, end in bounds:
        parts.append(att[..., start:end].sum(-1, keepdim=True))
        start = end
    parts.append(att[..., n_prefix:])
    return torch.cat(parts, -1)


@torch.no_grad()
def explorer_data(runner: ConditionRunner, conditions: dict[str, Condition], pairs: PairSet,
                  n_pairs: int = 2, rows: int = ROWS) -> dict:
    model, tok = runner.model, runner.model.tokenizer
    L, H = model.n_layers, model.n_heads
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    prompts = []
    for i in range(min(n_pairs, len(pairs))):
        for side in ("clean", "corrupt"):
            prompts.append({"pair": pairs.ids[i], "side": side,
                            "ids": getattr(pairs, side)[i]})
    out = {"rows": rows, "n_layers": L, "n_heads": H, "prompts": [], "conditions": {}}
    for p in prompts:
        out["prompts"].append({"pair": p["pair"], "side": p["side"]})
    for name, cond in conditions.items():
        prefix = runner.prefix(cond)
        bounds = segments(tok, runner.task, cond.demos)
        entries = []
        with runner.use(cond):
            for p in prompts:
                store, hooks = capture(names, lambda act: act[0, :, -rows:].detach().float())
                ids = torch.tensor([prefix + p["ids"]], device=model.device)
                forward(model, ids, hooks=hooks)
                att = torch.cat([store[n] for n in names])                 # [L*H, rows, T]
                att = _collapse(att, bounds, len(prefix))
                labels = [label for label, _ in bounds] + [
                    tok.decode([t]) for t in p["ids"]]
                quant = (att.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
                entries.append({"tokens": labels, "keys": att.shape[-1],
                                "rows": att.shape[1],
                                "data": base64.b64encode(quant.cpu().numpy().tobytes()).decode()})
        out["conditions"][name] = entries
    return out
