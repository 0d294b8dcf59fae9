"""Surface-cue audit of a task family.

A circuit found on a task is the circuit of whatever solves it; if a surface feature the family
did not mean to teach (prompt length, line count, the first or last number) predicts the
answer, the circuit may be that cue's. :func:`audit` fits a lookup classifier (feature value ->
most common answer among the fitting items) on one seed's items and scores it on another seed's
items, for every surface feature, and compares it with the majority answer. It also scores the
family's declared shortcut, which must solve pattern items and fail control items.

A lookup sees one feature at a time; :func:`bag_of_tokens_accuracy` sees the tokens themselves:
an L2-regularised logistic regression on unigram and bigram presence, 5-fold cross-validated,
per item kind (pattern, control) and pair kind (counterfactual, separating: both prompts of
each pair, labelled by their answers). On control items and separating pairs it must stay
within :data:`BAR` of the majority answer (those items are meant to need the rule); on pattern
items and counterfactual pairs the declared shortcut solves them by design, so it is reported
without a bar. For each pair kind it also tries to tell clean prompts from corrupt ones (an
edit that leaves a trace the model could read would show there; reported, no bar).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from interp.tasks.base import PAIR_KINDS, Example, generate, get_task, pair_sources

#: how far above the majority answer a cue may score on items meant to need the rule
BAR = 0.1
_TOKEN = re.compile(r"\w+|[^\w\s]")

_NUMBER = re.compile(r"-?\d+")


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


FEATURES: dict[str, Callable[[Example], object]] = {
    "chars": lambda ex: len(ex.input),
    "words": lambda ex: len(ex.input.split()),
    "lines": lambda ex: ex.input.count("\n") + 1,
    "first_number": lambda ex: (_numbers(ex.input) or [None])[0],
    "last_number": lambda ex: (_numbers(ex.input) or [None])[-1],
}


def majority_accuracy(fit: Sequence[Example], score: Sequence[Example]) -> float:
    """Accuracy on ``score`` of always answering the most common answer of ``fit``."""
    top = Counter(ex.target for ex in fit).most_common(1)[0][0]
    return sum(ex.target == top for ex in score) / len(score)


def lookup_accuracy(fit: Sequence[Example], score: Sequence[Example],
                    feature: Callable[[Example], object]) -> float:
    """Accuracy on ``score`` of a lookup classifier fitted on ``fit``: each feature value maps to
    its most common answer (unseen values: the overall most common answer)."""
    overall = Counter(ex.target for ex in fit).most_common(1)[0][0]
    by_value: dict[object, Counter] = {}
    for ex in fit:
        by_value.setdefault(feature(ex), Counter())[ex.target] += 1
    table = {v: c.most_common(1)[0][0] for v, c in by_value.items()}
    return sum(table.get(feature(ex), overall) == ex.target for ex in score) / len(score)


def shortcut_accuracy(items: Sequence[Example], name: str | None = None,
                      inverted: bool = False) -> float:
    """How often a shortcut (default: the family's declared one) gives the right answer; with
    ``inverted`` (two-answer families), how often the other answer is right (a control whose
    shortcut is always wrong is solved by inverting it)."""
    if not items:
        return float("nan")
    family = get_task(items[0].task)
    key = name or family.primary_shortcut
    right = sum(family.shortcuts(ex)[key] == ex.target for ex in items) / len(items)
    return 1 - right if inverted else right


def bag_of_tokens(texts: Sequence[str], vocab: dict[str, int] | None = None, tokenize=None
                  ) -> tuple[torch.Tensor, dict[str, int]]:
    """Unigram and bigram presence ``[n, features]`` (a vocabulary from ``texts`` when not
    given: the n-grams seen at least twice)."""
    tokenize = tokenize or _TOKEN.findall
    grams = []
    for text in texts:
        toks = tokenize(text)
        grams.append(set(toks) | {f"{a} {b}" for a, b in zip(toks, toks[1:])})
    if vocab is None:
        counts = Counter(g for gs in grams for g in gs)
        vocab = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= 2))}
    x = torch.zeros(len(texts), max(len(vocab), 1))
    for row, gs in enumerate(grams):
        x[row, [vocab[g] for g in gs if g in vocab]] = 1.0
    return x, vocab


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1.0):
    """Multinomial logistic regression: cross-entropy summed over items plus ``l2 / 2 ||w||^2``
    (scikit-learn's C = 1), by L-BFGS."""
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ w + b, y, reduction="sum") \
            + 0.5 * l2 * (w ** 2).sum()
        value.backward()
        return value

    opt.step(loss)
    return w.detach(), b.detach()


def bag_of_tokens_accuracy(texts: Sequence[str], labels: Sequence[str], folds: int = 5,
                           seed: int = 0, tokenize=None) -> tuple[float, float]:
    """Cross-validated accuracy of the bag-of-tokens classifier and of the majority answer
    (each fold's vocabulary, classes and majority come from its training part only)."""
    order = list(range(len(texts)))
    random.Random(f"bag-of-tokens|{seed}").shuffle(order)
    right = majority = 0
    for f in range(folds):
        test = order[f::folds]
        held = set(test)
        train = [i for i in order if i not in held]
        classes = sorted({labels[i] for i in train})
        index = {c: j for j, c in enumerate(classes)}
        x, vocab = bag_of_tokens([texts[i] for i in train], tokenize=tokenize)
        y = torch.tensor([index[labels[i]] for i in train])
        w, b = _fit_logistic(x, y, len(classes))
        xt, _ = bag_of_tokens([texts[i] for i in test], vocab, tokenize)
        guess = (xt @ w + b).argmax(-1).tolist()
        right += sum(classes[g] == labels[i] for g, i in zip(guess, test))
        top = Counter(labels[i] for i in train).most_common(1)[0][0]
        majority += sum(labels[i] == top for i in test)
    return right / len(texts), majority / len(texts)


def _pair_texts(task: str, n: int, kind: str, seed: int, **knobs):
    """Both prompts of each pair of ``kind`` with their answers, and clean/corrupt labels."""
    texts, answers, sides = [], [], []
    for ex, corrupt, foil in pair_sources(task, n // 2, seed=seed, kind=kind, **knobs):
        texts += [ex.input, corrupt]
        answers += [ex.target, foil]
        sides += ["clean", "corrupt"]
    return texts, answers, sides


def token_audit(task: str, n: int = 400, seed: int = 0, tokenize=None, **knobs) -> list[dict]:
    """The bag-of-tokens rows of :func:`audit`: per item kind and pair kind, the classifier's
    cross-validated accuracy, the majority answer's and the bar (None: reported only)."""
    rows = []

    def row(condition, feature, texts, labels, bar):
        acc, maj = bag_of_tokens_accuracy(texts, labels, seed=seed, tokenize=tokenize)
        rows.append({"task": task, "condition": condition, "feature": feature, "accuracy": acc,
                     "majority": maj, "excess": acc - maj, "bar": bar})

    for pattern in (True, False):
        items = generate(task, n, seed=seed, split="train", pattern=pattern, **knobs)
        row("pattern" if pattern else "control", "bag_of_tokens", [e.input for e in items],
            [e.target for e in items], None if pattern else BAR)
    for kind in PAIR_KINDS:
        texts, answers, sides = _pair_texts(task, n, kind, seed, **knobs)
        if not texts:                     # no edit of this kind applies to the family's items
            continue
        row(kind, "bag_of_tokens", texts, answers, BAR if kind == "separating" else None)
        row(kind, "clean_vs_corrupt", texts, sides, None)
    return rows


def audit(task: str, n: int = 400, fit_seed: int = 0, score_seed: int = 1, tokenizer=None,
          tokens: bool = True, **knobs) -> list[dict]:
    """One row per (condition, feature): lookup accuracy, the majority baseline and the excess
    over it; a ``shortcut:<name>`` row per shortcut (its accuracy, no fitting); and, with
    ``tokens``, the bag-of-tokens rows of :func:`token_audit` (with a ``bar``). With a
    ``tokenizer`` the prompt's token count is one more feature (``tokens``) and the classifier
    reads its tokens."""
    features = dict(FEATURES)
    if tokenizer is not None:
        features["tokens"] = lambda ex: len(tokenizer(ex.input).input_ids)
    rows = []
    for pattern in (True, False):
        condition = "pattern" if pattern else "control"
        fit = generate(task, n, seed=fit_seed, split="train", pattern=pattern, **knobs)
        score = generate(task, n, seed=score_seed, split="test", pattern=pattern, **knobs)
        majority = majority_accuracy(fit, score)
        for name, feature in features.items():
            acc = lookup_accuracy(fit, score, feature)
            rows.append({"task": task, "condition": condition, "feature": name, "accuracy": acc,
                         "majority": majority, "excess": acc - majority})
        for name in score[0].meta["shortcuts"]:
            for inverted in (False, True) if get_task(task).choices else (False,):
                acc = shortcut_accuracy(score, name, inverted)
                rows.append({"task": task, "condition": condition,
                             "feature": f"shortcut:{name}" + (":inverted" if inverted else ""),
                             "accuracy": acc, "majority": majority, "excess": acc - majority})
    if tokens:
        rows += token_audit(task, n, fit_seed, tokenizer.tokenize if tokenizer else None,
                            **knobs)
    return rows
