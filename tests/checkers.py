"""Independent answer checkers: recompute each target from ``meta`` alone, not the generators."""

import ast
import json
import operator
import subprocess
import sys
from collections import deque

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def arith(node):
    if isinstance(node, ast.Expression):
        return arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -arith(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        return _BIN[type(node.op)](arith(node.left), arith(node.right))
    raise ValueError(f"unexpected node {ast.dump(node)}")


def boolean(node):
    if isinstance(node, ast.Expression):
        return boolean(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BoolOp):
        values = [boolean(v) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    raise ValueError(f"unexpected node {ast.dump(node)}")


def connected(edges, a="A", z="Z"):
    graph = {}
    for x, y in edges:
        graph.setdefault(x, set()).add(y)
        graph.setdefault(y, set()).add(x)
    seen, todo = {a}, deque([a])
    while todo:
        node = todo.popleft()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return z in seen


_RUNNER = r"""
import contextlib, io, json, sys
out = []
for src in json.load(sys.stdin):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(src, {"__name__": "__main__"})
    out.append(buf.getvalue().strip())
json.dump(out, sys.stdout)
"""


def run_programs(sources):
    """Run every program in a separate Python process (not the generator's interpreter)."""
    done = subprocess.run([sys.executable, "-I", "-c", _RUNNER], input=json.dumps(sources),
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout)
