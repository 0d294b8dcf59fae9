"""Counterfactual (clean, corrupt) prompt pairs whose answers differ and whose token lengths match.

Each family edits one detail of a pattern example so the answer flips: the trailing term of a
Boolean expression, Z's name in a relation, one subset bit of a parity sequence, the first term
of S in an expression, the constant of ``function2`` in a program. Under ICL both members share
the same demonstrations.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence


from interp.analysis.metrics import first_answer_token
from interp.errors import ConfigError, TaskError
from interp.prompts import answer_sep, build_prompt
from interp.tasks import Example, generate


def _flip(ex: Example, rng: random.Random) -> tuple[str, str] | None:
    """(corrupt input, corrupt target) or None when this example has no clean edit."""
    text, meta = ex.input, ex.meta
    if ex.task == "boolean":
        swap = {" and False\n": " or True\n", " or True\n": " and False\n"}
        old = next(k for k in swap if k in text)
        return text.replace(old, swap[old]), "True" if ex.target == "False" else "False"
    if ex.task == "relation":
        if ex.target != "True":
            return None
        used = {c for e in meta["edges"] for c in e}
        free = [c for c in "BCDEFGHIJKLMNOPQRSTUVWXY" if c not in used]
        lines = text.split("\n")
        body = [ln.replace("Z", rng.choice(free)) for ln in lines[:-2]]
        return "\n".join(body + lines[-2:]), "False"
    if ex.task == "parity":
        bits = list(meta["bits"])
        bits[meta["subset"][0]] ^= 1
        head = "Sequence: " + " ".join(map(str, bits))
        return head + "\n" + text.split("\n", 1)[1], "even" if ex.target == "odd" else "odd"
    if ex.task == "expression":
        s = meta["s"]
        for new in rng.sample(range(10), 10):
            target = str(new + sum(s[1:]))
            if 0 <= s[0] <= 9 and target[0] != ex.target[0]:
                expr = meta["expression"]
                return f"({new}" + expr[len(f'({s[0]}'):] + "=", target
        return None
    if ex.task == "code":
        from interp.tasks.code import run_program

        src, k = meta["source"], meta["k"]
        old = f"return z {meta['op']} {k}"
        for new in rng.sample(range(1, 10), 9):
            cand = src.replace(old, f"return z {meta['op']} {new}")
            out = run_program(cand)
            if out[:1] != ex.target[:1]:
                return cand + "\nOutput:", out
        return None
    raise TaskError(f"no counterfactual pairs for task {ex.task!r}")


def task_pairs(task: str, n: int, seed: int = 0, split: str = "test",
               demos: Sequence[Example] = (), header: bool | str = True,
               tokenizer=None) -> list[dict]:
    """n text pairs ``{"clean", "corrupt", "answer", "foil"}`` from pattern examples."""
    rng = random.Random(f"pairs|{task}|{seed}")
    pool = generate(task, 4 * n + 8, seed=seed, split=split, pattern=True)
    out = []
    for ex in pool:
        flipped = _flip(ex, rng)
        if flipped is None:
            continue
        corrupt_input, foil = flipped
        prefix = build_prompt(ex, demos, header).prefix
        sep = answer_sep(task)
        pair = {"clean": prefix + ex.input, "corrupt": prefix + corrupt_input,
                "answer": sep + ex.target, "foil": sep + foil, "id": ex.id}
        if tokenizer is not None:
            a, b = (len(tokenizer(pair[k]).input_ids) for k in ("clean", "corrupt"))
            if a != b or first_answer_token(tokenizer, pair["answer"]) == first_answer_token(
                    tokenizer, pair["foil"]):
                continue
        out.append(pair)
        if len(out) == n:
            return out
    raise TaskError(f"could only build {len(out)} of {n} {task} pairs; ask for fewer")


def read_pairs(path: str | Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{lineno}: not JSON") from exc
        missing = {"clean", "corrupt", "answer", "foil"} - set(row)
        if missing:
            raise ConfigError(f"{path}:{lineno}: missing {', '.join(sorted(missing))}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path} holds no pairs")
    return rows


def tokenize_pairs(model, pairs: Sequence[dict]) -> list[dict]:
    """Tokenise as ``TransformerBridge.to_tokens`` does by default (BOS prepended)."""
    bridge, tok = model.bridge, model.tokenizer
    out = []
    for i, p in enumerate(pairs):
        clean, corrupt = bridge.to_tokens(p["clean"])[0], bridge.to_tokens(p["corrupt"])[0]
        if clean.shape != corrupt.shape:
            raise ConfigError(f"pair {i}: clean and corrupt tokenise to {clean.shape[0]} and "
                              f"{corrupt.shape[0]} tokens; they must match")
        out.append({"clean": clean.cpu(), "corrupt": corrupt.cpu(),
                    "answer_id": first_answer_token(tok, p["answer"]),
                    "foil_id": first_answer_token(tok, p["foil"])})
    return out
