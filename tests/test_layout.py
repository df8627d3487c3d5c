"""The package layout: no import cycle (read from the source with ast), only the allowed package edges,
a short top level."""

from __future__ import annotations

import ast
from pathlib import Path

import prunescope

PACKAGE = Path(prunescope.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _imports(name: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    """Modules of the package that `name` imports, anywhere in its body (lazy imports count too)."""
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            deps.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            deps.update(submodules)
            # `from pkg import name` runs pkg/__init__ unless every name is a submodule.
            if len(submodules) < len(node.names) and target in modules:
                deps.add(target)
    deps.discard(name)
    return deps


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_in_the_package():
    modules = _modules()
    graph = {name: _imports(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle():
    # The checker itself must be able to fail: a -> b -> c -> a is one cycle, d alone is none.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


# Which top-level packages (or modules) of prunescope each one may import, lazily or not.  "*" = any.
# Read bottom-up: errors/util/hardware know nothing of pruning; formats time their `auto` choice through
# hardware, never latency; latency measures what formats build and does not prune (the caller does) nor
# write files (report does); experiments orchestrate everything below commands; commands and the CLI
# may import anything.  A new edge is a design decision: add it here with the code that needs it.
_ALLOWED = {
    "errors": "",
    "version": "",
    "util": "errors",
    "hardware": "errors util",
    "device": "errors",
    "demo": "errors",
    # quantization may be imported by formats (a quantized format), so it stays below them
    "quantization": "errors layers util hardware device",
    "formats": "errors layers util hardware quantization",
    # layers -> formats: `isinstance(module, SparseLinear)` (formats.base) where a projection may be sparse
    "layers": "errors formats",
    "structure": "errors formats layers quantization",
    "latency": "errors formats hardware layers structure util",
    "models": "errors util device demo checkpoint",
    "evaluation": "errors util device demo models",
    # pruning -> quantization: SparseGPT's joint prune + quantize pass (GPTQ in its column loop)
    "pruning": "errors util device demo layers evaluation hardware quantization",
    "checkpoint": "errors util device layers formats structure pruning evaluation quantization cli",
    "report": "errors util hardware latency models evaluation structure layers",
    "experiments": "errors util version device hardware demo layers structure formats quantization latency "
    "models evaluation pruning checkpoint report",
    "commands": "*",
    "cli": "*",
    "__init__": "*",  # prunescope/__init__.py: the public API re-exports
}
ALLOWED: dict[str, set[str]] = {package: set(targets.split()) for package, targets in _ALLOWED.items()}
# Module-level exceptions, each with the reason and when it goes.
TRANSITIONAL: dict[str, tuple[set[str], str]] = {}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _forbidden_edges(graph: dict[str, set[str]], allowed: dict[str, set[str]], transitional=None) -> list:
    """'module -> imported module' for every import that crosses packages outside the `allowed` table."""
    transitional = transitional or {}
    bad = []
    for module, deps in sorted(graph.items()):
        source = _package(module)
        ok = allowed.get(source)
        extra = transitional.get(module, (set(), ""))[0]
        for dep in sorted(deps):
            target = _package(dep)
            if target == source or (ok is not None and ("*" in ok or target in ok)) or target in extra:
                continue
            bad.append(f"{module} -> {dep}")
    return bad


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}


def test_only_allowed_package_edges():
    graph = _graph()
    unknown = sorted({_package(m) for m in graph} - set(ALLOWED))
    assert unknown == [], f"new top-level packages need a row in ALLOWED: {unknown}"
    assert _forbidden_edges(graph, ALLOWED, TRANSITIONAL) == []


def test_edge_checker_catches_a_planted_edge(tmp_path):
    graph = _graph()
    planted = {**graph, "prunescope.formats.auto": graph["prunescope.formats.auto"] | {"prunescope.latency"}}
    assert _forbidden_edges(planted, ALLOWED, TRANSITIONAL) == [
        "prunescope.formats.auto -> prunescope.latency"
    ]
    # a lazy import inside a function counts as much as one at the top
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from ..latency.benchmark import run_latency\n", encoding="utf-8")
    deps = _imports("prunescope.formats.fake", fake, False, _modules())
    assert _forbidden_edges({"prunescope.formats.fake": deps}, ALLOWED) == [
        "prunescope.formats.fake -> prunescope.latency.benchmark"
    ]
    # the transitional exception covers its one module only
    moved = {"prunescope.latency.benchmark": {"prunescope.pruning"}}
    assert _forbidden_edges(moved, ALLOWED, TRANSITIONAL) == [
        "prunescope.latency.benchmark -> prunescope.pruning"
    ]


def test_formats_and_latency_stay_below_what_they_must_not_know():
    graph = _graph()
    for module, deps in graph.items():
        if _package(module) == "formats":
            assert not {d for d in deps if _package(d) == "latency"}, module
        if _package(module) == "hardware":
            assert not {d for d in deps if _package(d) in ("formats", "latency")}, module


def test_top_level_is_short():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 10, top


def test_study_module_is_not_shadowed_by_the_api_function():
    import importlib

    module = importlib.import_module("prunescope.experiments.study")
    assert callable(prunescope.study) and not hasattr(prunescope.study, "StudyConfig")
    assert module.StudyConfig is prunescope.StudyConfig
