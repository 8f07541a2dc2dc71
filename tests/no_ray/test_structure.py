"""The layout's rules, read from the source (no Ray, nothing imported):

* the import graph of ``src/`` has no cycle, type-only and function-level imports included,
  and no module imports one from a layer above its own;
* every private Ray symbol is reached through ``serve_adapter/_ray.py``; only the switch
  (``_startup.py``, which imports no Ray) names Serve's modules, as strings;
* one module composes GCS KV keys (``serve_adapter/kv.py``): no other place in ``src/``,
  ``benchmarks/`` or ``tests/`` calls the GCS client's KV methods or spells the namespace
  or the prefix, besides the tests that pin the stored format on purpose.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "serve_cleanup"

# Lowest first. A module may import from its own layer or one below.
LAYERS = (
    ("errors",),
    ("core",),
    ("serve_adapter", "controller"),  # controller.py: the 0.1.0 class path, a re-export
    ("_startup",),  # the switch: stdlib at import, the durable controller when asked
    ("client",),
    ("cli",),
    ("",),  # the package's public API (serve_cleanup/__init__.py)
)
RAY_SIDE = PACKAGE / "serve_adapter" / "_ray.py"
SWITCH = PACKAGE / "_startup.py"
KV = PACKAGE / "serve_adapter" / "kv.py"
PRIVATE_RAY = re.compile(r"^ray\.(_private|_raylet|core|serve\._private)(\.|$)")
# Private attributes of another object that code outside _ray.py may touch: the two Serve
# hooks the durable controller overrides (it calls the originals through super()), and
# the standard library's.
ALLOWED_PRIVATE = {
    ("serve_adapter/controller.py", "_register_shutdown_cleanup_actor"),
    ("serve_adapter/controller.py", "_kill_registered_cleanup_actors"),
    ("serve_adapter/faults.py", "_exit"),  # os._exit at a crash point
    ("_startup.py", "_getframe"),  # sys._getframe in the guard
}
# Tests that spell the stored format on purpose, and the KV methods they may call.
FORMAT_PINS = {
    "test_upgrade.py",  # 0.1.0's whole v1 key, written as 0.1.0 wrote it
    "test_compat.py",  # kv.NAMESPACE and kv.PREFIX against Serve's own
    "test_structure.py",  # this file
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(path: Path) -> list[str]:
    """Every module name an import statement anywhere in the file names (``from m import
    x`` counts as ``m.x`` too: x may be a module)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = {resolve(n) for n in _imports(path) if n.startswith("serve_cleanup")}
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def _layer(module: str) -> int:
    rest = module.split(".", 1)[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if rest.split(".")[0] in names:
            return i
    raise AssertionError(f"{module}: in no layer of LAYERS; add it")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in _graph().items() for t in targets
        if _layer(t) > _layer(m) and not m.startswith(t)
    ]
    assert upward == []


def test_private_ray_modules_are_imported_by_one_module():
    offenders = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in _modules().values() if path != RAY_SIDE
        for name in _imports(path) if PRIVATE_RAY.match(name)
    ]
    assert offenders == []


def test_private_attributes_of_ray_objects_are_read_in_one_module():
    offenders = []
    for path in _modules().values():
        if path == RAY_SIDE:
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if (rel, node.attr) not in ALLOWED_PRIVATE:
                offenders.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


def test_only_the_switch_names_serve_modules_as_strings():
    offenders = []
    for path in _modules().values():
        if path == SWITCH:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.search(r"\bray\.(serve\.)?_private\b", node.value) and not _is_docstring(path, node):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def _is_docstring(path: Path, const: ast.Constant) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if body[0].value.lineno == const.lineno and body[0].value.value == const.value:
                    return True
    return False


def test_the_switch_imports_no_ray_at_import_time():
    tree = ast.parse(SWITCH.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
    assert [n for n in names if n.split(".")[0] not in ("__future__", "os", "sys")] == []


# --- one home for the KV key ---------------------------------------------------------

# A call of the GCS client's KV methods, the prefix, or a namespace spelled out.
KV_SPELLINGS = re.compile(r"internal_kv_|ray-serve-serve|NAMESPACE\s*=\s*b[\"']")


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """The file's lines without comments and docstrings (prose may name the layout)."""
    tree = ast.parse(path.read_text())
    prose = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                prose.update(range(first.lineno, first.end_lineno + 1))
    return [(n, line.split("#", 1)[0]) for n, line in enumerate(path.read_text().splitlines(), 1)
            if n not in prose]


def _kv_offenders(paths) -> list[str]:
    out = []
    for path in paths:
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        out += [f"{name}:{n}: {line.strip()}" for n, line in _code_lines(path) if KV_SPELLINGS.search(line)]
    return out


def test_one_module_composes_kv_keys_in_src_and_benchmarks():
    paths = [p for p in PACKAGE.rglob("*.py") if p != KV] + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert _kv_offenders(paths) == []


def test_tests_reach_the_kv_through_the_store():
    paths = [p for p in (ROOT / "tests").rglob("*.py") if p.name not in FORMAT_PINS]
    assert _kv_offenders(paths) == []


@pytest.mark.parametrize("line", [
    'gcs.internal_kv_put(b"x", b"v", True, b"serve")',
    'KEY = b"ray-serve-serve-serve-cleanup-actor-"',
    'KV_NAMESPACE = b"serve"',
])
def test_kv_spellings_are_found(line, tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(line + "\n")
    assert _kv_offenders([path]) != []
