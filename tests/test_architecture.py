"""The package's import structure, read from the source (AST, every import, at module level or inside functions).

Data flows one way (fetch, prepare, train, run folder, then eval, infer, export, serve), and so do imports:
each top-level room (``cellmorphnet.X``, a module or a sub-package) sits on a layer and imports only rooms on
lower layers. No two modules import each other, directly or round a loop, and no module imports another's
private (``_``) names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cellmorphnet"

# Lowest first. A room may import rooms on lower layers only (rooms on one layer do not import each other).
LAYERS = [
    ["errors"],  # the one exception hierarchy, which every room raises
    ["_io"],  # atomic writes, digests, writable paths
    ["paths", "runtime", "vision", "shipped"],  # foundations: no network, no dataset (runtime.database writes SQLite)
    ["data"],  # datasets from fetch to loader
    ["reviews"],  # what reviewers decided (reads the taxonomy's white-cell types)
    ["model", "export"],  # the network, its loss, and it run over prepared splits; ONNX and CoreML
    ["runs"],  # config, record, checkpoints, folders, a run loaded back: what every later step reads
    ["inference"],  # files to predictions: reading, framing, set-level steps, the differential, Grad-CAM
    ["evaluation"],
    ["labs"],  # lab profiles: a lab's values measured once, and a conformal rule from its reviewed cells
    ["training"],  # fit, engine, calibration, and fine-tuning a run to a lab (training.finetune)
    ["serve", "api"],
    ["cli"],
    ["__main__"],
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str]]:
    """(imported module, imported name or '') for every import in one module, resolved to the package's modules."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full, "") if full in modules else (base, a.name))
    return [(m, n) for m, n in out if m == "cellmorphnet" or m.startswith("cellmorphnet.")]


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph():
    modules = _modules()
    return modules, {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_room_has_a_layer():
    modules, _ = _graph()
    rooms = {_room(m) for m in modules} - {None}
    assert rooms <= set(LAYER), f"rooms without a layer in LAYERS: {sorted(rooms - set(LAYER))}"


def test_rooms_import_only_rooms_below_them():
    _, edges = _graph()
    upward = []
    for module, imports in edges.items():
        here = _room(module)
        if here is None:  # the package's __init__: the lazy public API
            continue
        for target, _ in imports:
            there = _room(target)
            if there is not None and there != here and LAYER[there] >= LAYER[here]:
                upward.append(f"{module} imports {target} ({there} is not below {here})")
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_in_a_loop():
    modules, edges = _graph()

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {r for t, _ in imps if (r := resolve(t)) and r != m and not m.startswith(r + ".")}
             for m, imps in edges.items()}  # fmt: skip
    graph = {m: {t for t in ts if t != "cellmorphnet"} for m, ts in graph.items()}
    # a depth-first search that reports the first cycle it meets
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_no_module_imports_a_private_name_of_another():
    _, edges = _graph()
    private = [f"{m} imports {t}.{n}" for m, imps in edges.items() for t, n in imps
               if n.startswith("_") and not n.startswith("__") and t != m]  # fmt: skip
    assert not private, "\n".join(private)


def test_benchmarks_import_as_a_package_without_path_edits_and_nothing_depends_on_them():
    import importlib

    root = PKG.parent / "benchmarks"
    scripts = [p for p in [*root.glob("*.py"), *(root / "studies").glob("*.py")] if not p.name.startswith("_")]
    assert scripts and (root / "studies" / "README.md").exists()
    for path in scripts:
        assert "sys.path" not in path.read_text(encoding="utf-8"), path
        name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        assert callable(importlib.import_module(name).main), name
    for path in PKG.rglob("*.py"):  # nothing in the package depends on a benchmark
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            assert not [n for n in names if n.split(".")[0] == "benchmarks"], path


def module_sizes() -> dict[Path, int]:
    """Lines per module of the package (scripts/code_shape.py prints the largest)."""
    return {p: len(p.read_text(encoding="utf-8").splitlines()) for p in PKG.rglob("*.py")}


def positional_parameters() -> dict[str, int]:
    """Positional parameters (self and cls aside) of every function outside ``cli/``, by ``path:line name``."""
    out = {}
    for p in PKG.rglob("*.py"):
        if "cli" in p.relative_to(PKG).parts:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = [a for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                out[f"{p.relative_to(PKG)}:{node.lineno} {node.name}"] = len(args)
    return out


def test_modules_stay_small_and_signatures_short():
    """The house rules of issue 35 (``python scripts/code_shape.py`` prints the figures): no module over 400 lines,
    no function outside ``cli/`` with more than 6 positional parameters, and only the package's entry points loose
    in ``cellmorphnet/``."""
    big = [f"{p.relative_to(PKG)} ({n})" for p, n in module_sizes().items() if n > 400]
    assert not big, big
    long = [f"{name} ({n})" for name, n in positional_parameters().items() if n > 6]
    assert not long, long
    assert sorted(p.name for p in PKG.glob("*.py")) == ["__init__.py", "__main__.py", "_io.py", "api.py", "errors.py",
                                                         "paths.py"]  # fmt: skip
