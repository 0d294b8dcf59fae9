"""Implicit-pattern task families; importing this package registers all of them."""

from interp.tasks import boolean, code, expression, parity, relation  # noqa: F401  (register)
from interp.tasks.base import (
                               PAIR_KINDS,
                               REGISTRY,
                               SPLITS,
                               Edit,
                               Example,
                               TaskFamily,
                               generate,
                               get_task,
                               pair_sources,
                               read_jsonl,
                               split_of,
                               write_jsonl,
)

TASKS = tuple(sorted(REGISTRY))

__all__ = ["Edit", "Example", "TaskFamily", "REGISTRY", "SPLITS", "TASKS", "generate", "get_task",
           "read_jsonl", "write_jsonl", "split_of", "PAIR_KINDS", "pair_sources"]
