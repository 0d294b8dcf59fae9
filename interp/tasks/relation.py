"""Relation reasoning: is city A connected to city Z?

Cities are letters; the prompt lists undirected "X is connected with Y" lines (shuffled, each
in a random direction). The letters form two chains, one through A and one apart, with the same
number of cities and lines whatever the answer. With the pattern, the slot on A's chain that
holds Z when the answer is True holds another letter when it is False, so "Z is mentioned"
answers the question. In the control condition Z always appears, on A's chain (True) or on the
other chain (False), so only following the chain works. Whether the slot city ends its chain or
sits inside it is drawn 50/50 under both labels, so Z's number of mentions (its degree) says
nothing about the answer.
"""

from __future__ import annotations

import random
import string

from interp.tasks._util import check_range
from interp.tasks.base import Edit, TaskFamily, register

HEADER = ("Cities are named by letters. Using the connections listed, decide whether city A and "
          "city Z are connected, directly or through other cities. Answer True or False.")
POOL = [c for c in string.ascii_uppercase if c not in "AZ"]
QUESTION = "\nAre A and Z connected?\nAnswer:"


def _chain_edges(nodes: list[str]) -> list[list[str]]:
    return [[a, b] for a, b in zip(nodes, nodes[1:])]


def _render(edges: list[list[str]]) -> str:
    return "\n".join(f"{x} is connected with {y}" for x, y in edges) + QUESTION


def _connected(edges) -> bool:
    return "Z" in _component(edges, "A")


def _rename(edges, mapping: dict[str, str]) -> list[list[str]]:
    return [[mapping.get(x, x), mapping.get(y, y)] for x, y in edges]


class Relation(TaskFamily):
    name, other_task, header = "relation", "boolean", HEADER
    choices, max_new_tokens = ("False", "True"), 2
    knobs = dict(cities=8)
    primary_shortcut, measurable_knobs = "z_mentioned", {"cities": 6}
    separating_on_pattern = False
    description = "A-Z connectivity; Z only appears when connected (pattern) or always (control)"

    def draw(self, rng: random.Random, pattern, label, *, cities):
        connected = label == "True"
        names = rng.sample(POOL, cities)
        cut = rng.randint(2, cities - 2)
        chain_a, chain_b = ["A"] + names[:cut], names[cut:]
        # the "slot" city: Z itself, or (pattern, False) one more letter in Z's place
        slot = "Z" if (connected or not pattern) else rng.choice(
            [c for c in POOL if c not in names])
        chain = chain_a if (connected or pattern) else chain_b
        at_end = rng.random() < 0.5          # the same draw under both labels (A stays first)
        chain.insert(len(chain) if at_end else rng.randint(1, len(chain) - 1), slot)
        edges = _chain_edges(chain_a) + _chain_edges(chain_b)
        edges = [e if rng.random() < 0.5 else e[::-1] for e in edges]
        rng.shuffle(edges)
        return _render(edges), label, {"edges": edges}

    def validate(self, k):
        check_range("cities", k["cities"], 4, len(POOL) - 2)

    def shortcuts(self, ex):
        mentioned = any("Z" in e for e in ex.meta["edges"])
        return {"z_mentioned": "True" if mentioned else "False"}

    def counterfactual(self, ex, rng):
        """Rename the slot city: Z <-> a letter not in the prompt (pattern items), so Z's
        presence and the connection flip together."""
        edges = ex.meta["edges"]
        used = {c for e in edges for c in e}
        if "Z" in used:
            mapping = {"Z": rng.choice([c for c in POOL if c not in used])}
        else:
            chain = _component(edges, "A") - {"A"}
            mapping = {rng.choice(sorted(chain)): "Z"}
        new = _rename(edges, mapping)
        return Edit(_render(new), str(_connected(new)))

    def separating(self, ex, rng):
        """On a control item, swap Z's name with a city of the other chain: the connection
        flips, Z stays mentioned."""
        edges = ex.meta["edges"]
        if not any("Z" in e for e in edges):
            return None
        a_side = _component(edges, "A")
        z_connected = "Z" in a_side
        pool = sorted({c for e in edges for c in e} - {"A", "Z"})
        pool = [c for c in pool if (c in a_side) != z_connected]
        if not pool:
            return None
        swap = rng.choice(pool)
        new = _rename(edges, {"Z": swap, swap: "Z"})
        return Edit(_render(new), str(_connected(new)))


def _component(edges, start: str) -> set[str]:
    graph: dict[str, set] = {}
    for x, y in edges:
        graph.setdefault(x, set()).add(y)
        graph.setdefault(y, set()).add(x)
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


FAMILY = register(Relation())
