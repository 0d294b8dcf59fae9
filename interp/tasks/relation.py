"""Relation reasoning: is city A connected to city Z?

Cities are letters; the prompt lists undirected "X is connected with Y" lines (shuffled). The
letters form two chains, one through A and one apart. With the pattern, Z appears only when it is
on A's chain, so "Z is mentioned" answers the question. In the control condition Z always
appears, on A's chain (True) or on the other chain (False), so only following the chain works.
"""

from __future__ import annotations

import random
import string

from interp.tasks._util import check_range
from interp.tasks.base import TaskFamily, register

HEADER = ("Cities are named by letters. Using the connections listed, decide whether city A and "
          "city Z are connected, directly or through other cities. Answer True or False.")
POOL = [c for c in string.ascii_uppercase if c not in "AZ"]


def _chain_edges(nodes: list[str]) -> list[list[str]]:
    return [[a, b] for a, b in zip(nodes, nodes[1:])]


def draw(rng: random.Random, pattern: bool, label: str, *, cities):
    connected = label == "True"
    names = rng.sample(POOL, cities)
    cut = rng.randint(2, cities - 2)
    chain_a = ["A"] + names[:cut]
    chain_b = names[cut:]
    if connected:
        chain_a.insert(rng.randint(1, len(chain_a)), "Z")
    elif not pattern:
        chain_b.insert(rng.randint(0, len(chain_b)), "Z")
    edges = _chain_edges(chain_a) + _chain_edges(chain_b)
    edges = [e if rng.random() < 0.5 else e[::-1] for e in edges]
    rng.shuffle(edges)
    lines = "\n".join(f"{x} is connected with {y}" for x, y in edges)
    text = f"{lines}\nAre A and Z connected?\nAnswer:"
    return text, label, {"edges": edges}


def validate(k: dict) -> None:
    check_range("cities", k["cities"], 4, len(POOL))


FAMILY = register(TaskFamily(
    name="relation", draw=draw, header=HEADER, choices=("False", "True"), max_new_tokens=2,
    knobs=dict(cities=8), validate=validate,
    description="A-Z connectivity; Z only appears when connected (pattern) or always (control)"))
