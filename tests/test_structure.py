"""The shape of the code base: no import cycle among interp modules (imports inside functions
and under TYPE_CHECKING count), no import against the declared layer order, no private name
imported across modules, no module over 500 lines and no function over 60, no tracked file over
1 MB, and a public API a notebook can discover."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "interp"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The interp module an imported dotted name belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path):
    """(imported module, imported names) for every import statement anywhere in the file."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("interp"):
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("interp"):
                for alias in node.names:
                    yield base, [alias.name]


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for base, names in _imports(path):
            targets = [_resolve(f"{base}.{n}") if f"{base}.{n}" in MODULES else _resolve(base)
                       for n in names] or [_resolve(base)]
            graph[module] |= {t for t in targets if t and t != module}
    return graph


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


#: The one direction of the pipeline (DESIGN.md), lowest first: a module imports only from its
#: own layer or the layers before it. A name stands for the module and everything below it; the
#: longest matching name decides a module's layer.
LAYERS = (
    ("interp.errors", "interp.version", "interp.lazy", "interp.stats", "interp.shift.estimator",
     "interp.shift.verdict", "interp.names", "interp.analysis.metrics",
     "interp.report.html"),
    ("interp.files", "interp.locks", "interp.budget", "interp.options", "interp.tracking",
     "interp.results", "interp.plots"),
    ("interp.tasks",),
    ("interp.prompts",),
    ("interp.shift.table",),
    ("interp.arch", "interp.models"),
    ("interp.provenance", "interp.engine"),
    ("interp.evaluate", "interp.finetune"),
    ("interp.circuits",),
    ("interp.analysis",),
    ("interp.report.explorer", "interp.report.shift"),
    ("interp.shift",),
    ("interp.claims", "interp.align"),
    ("interp.report",),
    ("interp.study", "interp.sweep"),
    ("interp.commands", "interp.cli", "interp.__main__", "interp"),
)


def _layer(module: str) -> int:
    best = max((name for names in LAYERS for name in names
                if module == name or module.startswith(name + ".")), key=len)
    return next(i for i, names in enumerate(LAYERS) if best in names)


def test_imports_follow_the_layer_order():
    against = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
               for m, targets in _graph().items() for t in sorted(targets)
               if _layer(t) > _layer(m) and not m.startswith(t + ".")]  # a package's own parts
    assert not against, against


def test_functions_stay_short():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, long


def test_no_private_name_imported_across_modules():
    offenders = []
    for module, path in MODULES.items():
        for base, names in _imports(path):
            offenders += [f"{module}: from {base} import {n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    assert not offenders, offenders


def test_modules_stay_small():
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert all(n <= 500 for n in sizes.values()), {m: n for m, n in sizes.items() if n > 500}


def test_no_large_tracked_file():
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                           check=True).stdout.split()
    large = [f for f in files if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 1 << 20]
    assert not large, large


def test_public_api_is_discoverable():
    import interp
    import interp.analysis

    names = dir(interp)
    for name in ("load_model", "generate", "evaluate", "task_pairs", "tokenize_pairs",
                 "patch_pairs", "attribution_patch", "ScoreMap", "distances", "heatmap",
                 "run_shift", "run_study", "choose_demos"):
        assert name in names, name
        assert getattr(interp, name) is not None
    assert set(interp.__all__) <= set(dir(interp))
    assert "patch_pairs" in dir(interp.analysis) and len(interp.analysis.__all__) > 10
    with pytest.raises(AttributeError):
        interp.no_such_thing  # noqa: B018


def test_python_dash_m_interp_works():
    done = subprocess.run([sys.executable, "-m", "interp", "--version"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith("interp ")


def test_the_study_uses_only_the_shift_packages_public_names():
    inside = sorted(t for t in _graph()["interp.study"] if t.startswith("interp.shift."))
    assert not inside, inside
