"""What each condition of a run is: its demonstrations (one set per demonstration seed, chosen
once and shared by every stage), its weights (a fine-tuning update, or none), and the pairs and
queries every condition is measured on.

Prompts are tokenised as the evaluator and the fine-tuning data tokenise them: the shared prefix
(instruction header and demonstrations) first, with the tokenizer's own special tokens, then
the query text on its own; so every condition sees the very token sequences the fine-tuned
models were trained on, and a prefix is identical across all pairs of a condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from interp.analysis.metrics import first_answer_token
from interp.budget import Need, check, forward_seconds
from interp.engine import check_length, encode
from interp.errors import TaskError
from interp.models import LoadedModel
from interp.prompts import answer_sep, choose_demos, prefix_text
from interp.shift.config import CONDITIONS, SHAMS, TRAINED, ShiftConfig
from interp.shift.table import SPECS, TABLE
from interp.tasks import Example, generate, pair_sources


@dataclass
class Condition:
    """One condition of one replicate (a demonstration seed for ICL conditions, a fine-tuning
    seed for FT conditions)."""

    name: str
    seed: int = 0
    demos: list[Example] = field(default_factory=list)
    update: str | None = None            # key of the weight update (None: the base weights)
    label_agreement: float | None = None
    other_task: str | None = None
    length_ratio: float | None = None     # prompt length relative to base-icl's (ICL shams)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.seed}"

    @property
    def demo_ids(self) -> list[str]:
        return [d.id for d in self.demos]


def prefix_length(tokenizer):
    """``length(task, demos)``: the tokens of the shared prefix under ``demos``."""
    def length(task: str, demos) -> int:
        return len(encode(tokenizer, prefix_text(task, demos), first=True))
    return length


def build_conditions(config: ShiftConfig, tokenizer) -> list[Condition]:
    """Every (condition, replicate) of the run, in the table's order."""
    out = [Condition(spec.name) for spec in TABLE if spec.arm == "base"]
    length = prefix_length(tokenizer)
    for s in range(config.demo_seeds):
        demos = choose_demos(config.task, config.shots, seed=config.seed + s, **config.knobs)
        for spec in TABLE:
            if spec.arm == "icl":
                built = spec.demonstrations(config, demos, s, length)
                out.append(Condition(spec.name, s, built.demos,
                                     label_agreement=built.label_agreement,
                                     other_task=built.other_task, length_ratio=built.length_ratio))
    for s in range(config.ft_seeds):
        out += [Condition(spec.name, s, update=f"{spec.name}/{s}",
                          other_task=config.other_task if spec.other_task else None)
                for spec in TABLE if spec.arm == "ft"]
    order = {c: i for i, c in enumerate(CONDITIONS)}
    return sorted(out, key=lambda c: (order[c.name], c.seed))


def dose_conditions(config: ShiftConfig, fractions_steps: dict[float, int], tokenizer
                    ) -> list[Condition]:
    """The dose-response points, each beside its method's primary sham at the same dose:
    ``icl@k`` (base-icl at every shot count, nested demonstrations of each demonstration seed)
    with ``icl-sham@k`` (other-task demonstrations matched to those k in count and length), and
    ``ft@step`` (ft-zs at every recorded fraction of its steps) with ``ft-sham@step``
    (ft-other-task's checkpoint at that step)."""
    icl_sham, ft_sham = SHAMS["base-icl"].primary, SHAMS["ft-zs"].primary
    length = prefix_length(tokenizer)
    out = []
    for s in range(config.demo_seeds):
        demos = choose_demos(config.task, max(config.dose_shots), seed=config.seed + s,
                             **config.knobs)
        for k in config.dose_shots:
            built = SPECS[icl_sham].demonstrations(config, demos[:k], s, length)
            out += [Condition(f"icl@{k}", s, demos[:k]),
                    Condition(f"icl-sham@{k}", s, built.demos, other_task=built.other_task,
                              length_ratio=built.length_ratio)]
    last = max(fractions_steps.values())
    for s in range(config.ft_seeds):
        for step in sorted(fractions_steps.values()):
            at = "" if step == last else f"@{step}"       # the final update has no @ in its key
            out += [Condition(f"ft@{step}", s, update=f"ft-zs/{s}{at}"),
                    Condition(f"ft-sham@{step}", s, update=f"{ft_sham}/{s}{at}",
                              other_task=config.other_task)]
    return out


@dataclass
class PairSet:
    """Pairs every condition is scored on: query tokens (no prefix) of the clean and corrupt
    prompts, answer and foil token ids, and ids. ``kind`` is the edit kind."""

    kind: str
    ids: list[str]
    clean: list[list[int]]
    corrupt: list[list[int]]
    answer_ids: list[int]
    foil_ids: list[int]
    texts: list[dict]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx) -> PairSet:
        pick = list(idx)
        return PairSet(self.kind, [self.ids[i] for i in pick], [self.clean[i] for i in pick],
                       [self.corrupt[i] for i in pick], [self.answer_ids[i] for i in pick],
                       [self.foil_ids[i] for i in pick], [self.texts[i] for i in pick])


def build_pairs(config: ShiftConfig, tokenizer, n: int, kind: str = "counterfactual") -> PairSet:
    """``n`` pairs of one edit kind whose clean and corrupt queries tokenise to equal lengths and
    whose answers start with different tokens."""
    sep = answer_sep(config.task)
    rows = []
    for ex, corrupt_input, foil in pair_sources(config.task, 2 * n + 8, seed=config.seed,
                                                kind=kind, **config.knobs):
        clean_ids = encode(tokenizer, ex.input, first=False)
        corrupt_ids = encode(tokenizer, corrupt_input, first=False)
        answer = first_answer_token(tokenizer, sep + ex.target)
        foil_id = first_answer_token(tokenizer, sep + foil)
        if len(clean_ids) != len(corrupt_ids) or answer == foil_id:
            continue
        rows.append((ex.id, clean_ids, corrupt_ids, answer, foil_id,
                     {"clean": ex.input, "corrupt": corrupt_input, "answer": sep + ex.target,
                      "foil": sep + foil}))
        if len(rows) == n:
            break
    if len(rows) < n:
        raise TaskError(f"could only build {len(rows)} of {n} {config.task} {kind} pairs with "
                        "equal token lengths; ask for fewer pairs")
    return PairSet(kind, *map(list, zip(*rows)))


def queries(config: ShiftConfig, n: int | None = None) -> dict[str, list[Example]]:
    """The test queries of the accuracy stage (``n``, default ``config.n_eval``, of each):
    pattern and control, the same for every condition."""
    return {cond: generate(config.task, n or config.n_eval, seed=config.seed, split="test",
                           pattern=cond == "pattern", **config.knobs)
            for cond in ("pattern", "control")}


def check_fits(model: LoadedModel, config: ShiftConfig, conditions: Sequence[Condition],
               pair_sets: dict[str, PairSet], test_queries: dict[str, list[Example]]
               ) -> tuple[float, int]:
    """Every condition's longest prompt (demonstrations, a pair or test query, the answer)
    fits the model's context: checked before any work, so a run is refused, never cut. Returns
    the mean over conditions of their longest pair prompt and the longest test query (tokens),
    what :func:`run_need` estimates from."""
    longest = max(len(q) for pairs in pair_sets.values() for q in pairs.clean + pairs.corrupt)
    queries_longest = max(len(encode(model.tokenizer, ex.input, first=False))
                          for qs in test_queries.values() for ex in qs)
    tokens = 0
    for cond in conditions:
        prefix = encode(model.tokenizer, prefix_text(config.task, cond.demos), first=True)
        check_length(model, len(prefix) + max(longest, queries_longest) + 8,
                     f"the longest prompt of {cond.key}")
        tokens += len(prefix) + longest
    return tokens / len(conditions), queries_longest


def check_run_size(model: LoadedModel, config: ShiftConfig, conditions: Sequence[Condition],
                   sample: dict[str, PairSet], sample_queries: dict[str, list[Example]]) -> None:
    """Refuse (one line) a run beyond the machine's memory or time, estimated from a few sample
    pairs and queries before the run builds them all."""
    check(run_need(model, config, len(conditions),
                   *check_fits(model, config, conditions, sample, sample_queries)))


def run_need(model: LoadedModel, config: ShiftConfig, n_conditions: int, prompt: float,
             query: int) -> Need:
    """A lower bound on a run's time: its fine-tuning runs, each condition's accuracy (pattern and
    control queries) and attribution maps (clean and corrupt, forward and backward), and the
    causal tests' patched forwards."""
    from interp.finetune.trainer import training_need
    from interp.shift.training import train_config

    what = f"the shift run ({n_conditions} conditions, {config.n_pairs} pairs)"
    train = training_need(model, train_config(config, 0), config.n_train, query + 4, what)
    forwards = n_conditions * (2 * config.n_eval + 2 * config.n_pairs)
    tokens = n_conditions * (2 * config.n_eval * query + 4 * config.n_pairs * prompt)
    if config.causal:
        forwards += 6 * config.n_random_sets * config.n_pairs
        tokens += 6 * config.n_random_sets * config.n_pairs * prompt
    return Need(what, bytes=train.bytes, seconds=len(TRAINED) * config.ft_seeds * train.seconds
                + forward_seconds(model, tokens, forwards))


def prompt_tokens(model: LoadedModel, config: ShiftConfig, condition: Condition,
                  pairs: PairSet) -> tuple[list[int], torch.Tensor]:
    """The condition's prefix token ids and the mean prompt length over ``pairs``."""
    prefix = encode(model.tokenizer, prefix_text(config.task, condition.demos), first=True)
    lengths = torch.tensor([len(prefix) + len(c) for c in pairs.clean], dtype=torch.float)
    return prefix, lengths.mean()

