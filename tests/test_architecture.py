"""The architecture holds in the code: imports point down the layers of ARCHITECTURE.md,
loading a model needs no training code, and no function or module is too long to read."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cnnlab"

# ARCHITECTURE.md's table: each room and the rooms it may import (besides itself and the
# foundation). "cnnlab" is the package's own __init__ (the lazy public API), which only
# the CLI may import, since it reaches every layer.
FOUNDATION = {"errors", "_io", "_html", "_progress", "config", "run_folder", "memory"}
BELOW_EVALUATION = {"models", "runtime", "nn", "data"}
MAY_IMPORT = {
    "cli": {
        "cnnlab",
        "serve",
        "experiments",
        "workflows",
        "export",
        "evaluation",
        "training",
        "models",
        "runtime",
        "nn",
        "data",
    },
    "serve": {"runtime"},
    "experiments": {"workflows", "export", "evaluation", "training"} | BELOW_EVALUATION,
    "workflows": {"export", "evaluation", "training"} | BELOW_EVALUATION,
    "export": {"evaluation"} | BELOW_EVALUATION,
    "evaluation": BELOW_EVALUATION,
    "training": {"models", "nn", "data"},
    "models": {"nn"},
    "runtime": set(),
    "nn": set(),
    "data": set(),
    "foundation": set(),
    "cnnlab": set(),
}

MAX_FUNCTION_LINES = 120
MAX_MODULE_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    """The layer a module belongs to: its folder under cnnlab/, or the foundation."""
    parts = module.split(".")
    if len(parts) == 1:
        return "cnnlab"
    if parts[1] in FOUNDATION:
        return "foundation"
    return parts[1]


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The cnnlab module an imported dotted name lands in (the longest existing prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _facade() -> dict[str, str]:
    """``cnnlab.<name>`` -> the module it is loaded from: the package's lazy public API."""
    import cnnlab

    return dict(cnnlab._API)


def _imported_names(module: str, node: ast.AST, is_package: bool) -> list[str]:
    """The dotted names an ``import`` statement or ``importlib.import_module("...")`` reaches;
    ``cnnlab.train`` stands for what the lazy API loads (its module, via the façade)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        # `from pkg import sub` imports the submodule pkg.sub when there is one.
        return [f"{origin}.{alias.name}" for alias in node.names] or [origin]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]
    # `import cnnlab` then `cnnlab.train(...)`: the façade loads cnnlab.workflows.
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id == "cnnlab":
            return [f"cnnlab.{node.attr}"]
    return []


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """Every cnnlab module ``module`` imports, with the line: top-level imports, imports
    inside functions and under ``if``, relative imports, ``importlib.import_module`` of a
    literal name, and the lazy API (``from cnnlab import train``, ``cnnlab.train``)."""
    facade = _facade()
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        for name in _imported_names(module, node, is_package):
            parts = name.split(".")
            if parts[0] != "cnnlab":
                continue
            if len(parts) == 2 and name not in known and parts[1] in facade:
                name = facade[parts[1]]
            target = _resolve(name, known)
            # The package root itself imports nothing (its API is the façade above).
            if target not in (None, "cnnlab", module):
                found.append((target, node.lineno))
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def upward_edges(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    bad = set()
    for importer, targets in graph.items():
        src = room(importer)
        for imported, line in targets:
            dst = room(imported)
            if dst in (src, "foundation") or dst in MAY_IMPORT.get(src, ()):
                continue
            bad.add(f"{importer} (line {line}) imports {imported}: {src} may not import {dst}")
    return sorted(bad)


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    edges = {m: sorted({t for t, _ in targets}) for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return sorted(found)


def describe_cycle(component: list[str], graph: dict[str, list[tuple[str, int]]]) -> str:
    members = set(component)
    links = sorted(
        {f"{a} -> {b} (line {line})" for a in component for b, line in graph[a] if b in members}
    )
    return "cycle through " + ", ".join(component) + ":\n      " + "\n      ".join(links)


# ------------------------------------------------------------------ the checks themselves


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    known = {"cnnlab.evaluation.a": tmp_path / "a.py", "cnnlab.training.b": tmp_path / "b.py"}
    known["cnnlab.evaluation.a"].write_text(
        "import os\n\ndef f():\n    from cnnlab.training.b import g\n    return g\n"
        "from . import c\n"
    )
    edges = imports_of("cnnlab.evaluation.a", known["cnnlab.evaluation.a"], known)
    assert edges == [("cnnlab.training.b", 4)]
    graph = {"cnnlab.evaluation.a": edges, "cnnlab.training.b": [("cnnlab.evaluation.a", 9)]}
    assert upward_edges(graph) == [
        "cnnlab.evaluation.a (line 4) imports cnnlab.training.b: evaluation may not import "
        "training",
        "cnnlab.training.b (line 9) imports cnnlab.evaluation.a: training may not import "
        "evaluation",
    ]
    assert cycles(graph) == [["cnnlab.evaluation.a", "cnnlab.training.b"]]
    # The lazy API counts as an import of the module it loads from.
    known["cnnlab.workflows"] = tmp_path / "w.py"
    known["cnnlab"] = tmp_path / "root.py"
    path = tmp_path / "c.py"
    path.write_text(
        "import cnnlab\nfrom cnnlab import __version__\n\n"
        "def f():\n    return cnnlab.train(), cnnlab.__version__\n"
    )
    assert imports_of("cnnlab.evaluation.c", path, known) == [("cnnlab.workflows", 5)]
    path.write_text("from cnnlab import fine_tune\n")
    assert imports_of("cnnlab.evaluation.c", path, known) == [("cnnlab.workflows", 1)]


def test_every_module_belongs_to_a_layer():
    stray = sorted(m for m in modules() if room(m) not in MAY_IMPORT)
    assert not stray, (
        "modules in no layer of ARCHITECTURE.md (add the room to its table and to MAY_IMPORT, "
        "or move them into one): " + ", ".join(stray)
    )


def test_every_import_points_down_the_layers():
    bad = upward_edges(import_graph())
    assert not bad, "imports that point up or sideways (see ARCHITECTURE.md):\n  " + "\n  ".join(
        bad
    )


def test_no_import_cycles_between_modules():
    graph = import_graph()
    found = [describe_cycle(c, graph) for c in cycles(graph)]
    assert not found, "import cycles:\n  " + "\n  ".join(found)


LOAD_SCRIPT = """
import json, sys
import cnnlab.export
import cnnlab

model = cnnlab.load_model(sys.argv[1])
loaded = sorted(
    m for m in sys.modules
    if m.split(".")[:2] in (["cnnlab", "training"], ["cnnlab", "workflows"])
)
print(json.dumps({
    "modules": loaded,
    "schedule": type(model.optimizer._learning_rate).__name__,
    "output_shape": list(model.output_shape),
}))
"""


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A tiny airbench (cnnlab's custom layers) compiled with cnnlab's optimizer and
    schedule, one step trained, saved as .keras."""
    import keras
    import numpy as np

    from cnnlab.config import TrainConfig
    from cnnlab.export import save_model
    from cnnlab.models import create_model
    from cnnlab.nn import make_optimizer

    model = create_model("airbench", 2, 16, 3, width=0.125, tta=1)
    cfg = TrainConfig(optimizer="sgd", schedule="linear", epochs=1, learning_rate=0.01)
    model.compile(make_optimizer(cfg, steps_per_epoch=4), "categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    model.train_on_batch(x, keras.utils.to_categorical([0, 1, 0, 1], 2))
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.keras")


def test_loading_a_model_imports_no_training_code(saved_model):
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(saved_model)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The file really needed cnnlab's own objects: its optimizer runs cnnlab's schedule.
    assert result["schedule"] == "LinearWarmupDecay"
    assert result["output_shape"] == [None, 2]
    assert result["modules"] == [], (
        "loading a .keras file imported orchestration code: " + ", ".join(result["modules"])
    )


def long_functions(path: Path) -> list[tuple[str, int]]:
    out = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append((f"{node.name} (line {node.lineno})", length))
    return out


def test_no_function_or_module_is_too_long():
    offenders = []
    for path in modules().values():
        where = path.relative_to(SRC.parent)
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            offenders.append(f"{where}: module of {lines} lines (at most {MAX_MODULE_LINES})")
        for name, length in long_functions(path):
            offenders.append(
                f"{where}: {name} is {length} lines long (at most {MAX_FUNCTION_LINES})"
            )
    assert not offenders, "too long to read in one go:\n  " + "\n  ".join(offenders)


def test_the_length_check_counts_a_function_from_def_to_its_last_line(tmp_path):
    path = tmp_path / "m.py"
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    path.write_text(f"def short():\n    return 1\n\n\nclass C:\n    def long(self):\n{body}")
    assert long_functions(path) == [("long (line 6)", MAX_FUNCTION_LINES + 1)]
