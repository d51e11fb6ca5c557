"""The syncnorm package has no import cycle, and its layers import only downwards.

The graph is computed from the source (every `import` statement, lazy ones inside functions
included; those under `if TYPE_CHECKING:` never run and are left out), so a cycle fails here
before it can bite at import time. An edge goes to the module
named (`from syncnorm.functional import stats` -> syncnorm.functional.stats); the implicit import of
parent packages is not counted, as in Python's own resolution order.

One kind of edge is allowed back up, and only as an import inside a function: torch's API puts
`convert_sync_batchnorm` on the SyncBatchNorm class itself, while the converter (which also knows the
lazy classes) lives in `convert.py` above it (`LAZY_API_EDGES`).
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "syncnorm"


#: (importer, imported): lazy imports that serve torch's class-level API, not the layering
LAZY_API_EDGES = {("syncnorm.nn.sync_batchnorm", "syncnorm.nn.convert"),
                  ("syncnorm.torch.sync_batchnorm", "syncnorm.torch.convert")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def _lazy_nodes(tree: ast.Module) -> set[int]:
    """ids of the import statements inside functions."""
    out: set[int] = set()
    for f in ast.walk(tree):
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.update(id(n) for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


def _type_only_nodes(tree: ast.Module) -> set[int]:
    """ids of the import statements under `if TYPE_CHECKING:` (never run)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                out.update(id(n) for n in ast.walk(child) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


def imports_of(name: str, path: Path, known: set[str], lazy: bool | None = None) -> set[str]:
    """The syncnorm modules that `name` (at `path`) imports (`lazy`: only those inside functions
    (True), only module-level ones (False), or all (None))."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    inside = _lazy_nodes(tree)
    type_only = _type_only_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if lazy is not None and (id(node) in inside) != lazy:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


@functools.lru_cache(maxsize=1)
def _graph() -> dict[str, frozenset[str]]:
    mods = modules()
    known = set(mods)
    return {n: frozenset(imports_of(n, p, known)) for n, p in mods.items()}


def graph() -> dict[str, set[str]]:
    """module -> the syncnorm modules it imports (a fresh copy)."""
    return {n: set(v) for n, v in _graph().items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `g` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_the_imports():
    g = graph()
    assert "syncnorm.functional.stats" in g["syncnorm.nn.batchnorm"]
    assert "syncnorm.functional.moments" in g["syncnorm.functional.stats"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    g = graph()
    for a, b in LAZY_API_EDGES:
        g[a].discard(b)
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_allowed_back_edges_are_lazy_and_exist():
    mods = modules()
    known = set(mods)
    for a, b in LAZY_API_EDGES:
        assert b not in imports_of(a, mods[a], known, lazy=False), f"{a} imports {b} at module level"
        assert b in imports_of(a, mods[a], known, lazy=True), f"stale allowance {a} -> {b}"


def test_kernels_import_neither_mpi_nor_torch_nor_the_layers():
    """functional/ is pure numpy: no communication, no torch, no modules above it."""
    for name, path in modules().items():
        if not name.startswith("syncnorm.functional"):
            continue
        text = path.read_text()
        assert "mpi4py" not in text and "import torch" not in text, name
        for dep in graph()[name]:
            assert dep.startswith("syncnorm.functional"), f"{name} imports {dep}"


def test_collectives_live_in_distributed():
    """Only syncnorm/distributed/ talks to MPI's communicators directly (one grep finds them)."""
    offenders = []
    for name, path in modules().items():
        if name.startswith("syncnorm.distributed"):
            continue
        if "syncnorm.distributed.comm" in graph()[name]:
            offenders.append(name)
    assert not offenders, f"modules calling distributed.comm directly: {offenders}"
