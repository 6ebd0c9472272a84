"""The house's floors (docs/architecture.md), enforced on the source with ``ast``: every import counts,
function-level ones included.

* the core (``sparsity_core``) never imports ``app``, ``pages`` or ``streamlit``;
* no import circles inside the core;
* ``models.py`` imports nothing else of ours;
* pages import only ``app`` (never ``sparsity_core`` past it), and ``app`` never imports ``pages``;
* no module of ``sparsity_core``, ``app`` or ``pages`` is over 400 lines, no function over 80.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> dict[str, Path]:
    mods = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), at any depth of the file."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def _core_graph() -> dict[str, set[str]]:
    mods = _modules("sparsity_core")
    graph = {}
    for name, path in mods.items():
        targets = {t for t in _imports(name, path) if t in mods and t != name}
        # a module may import its own package (``from . import x`` resolves through it); not a circle
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_core_has_no_import_circles():
    assert _cycles(_core_graph()) == []


def test_the_core_never_imports_the_app_or_streamlit():
    for name, path in _modules("sparsity_core").items():
        bad = {t for t in _imports(name, path) if t.split(".")[0] in ("app", "pages", "streamlit", "plotly")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_models_imports_nothing_else_of_ours():
    graph = _core_graph()
    assert graph["sparsity_core.models"] <= {"sparsity_core.errors"}


FIRST_PARTY = ("sparsity_core", "app", "pages", "scripts", "benchmarks", "tests")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _ours(name: str, path: Path) -> set[str]:
    """The top-level packages of this repository that ``path`` imports."""
    return {t.split(".")[0] for t in _imports(name, path) if t.split(".")[0] in FIRST_PARTY}


def test_pages_import_only_the_app():
    for name, path in _modules("pages").items():
        assert _ours(name, path) <= {"app"}, f"{path.relative_to(ROOT)} imports {sorted(_ours(name, path) - {'app'})}"


def test_the_app_never_imports_pages_scripts_or_tests():
    for name, path in _modules("app").items():
        assert _ours(name, path) <= {"app", "sparsity_core"}, f"{path.relative_to(ROOT)} imports {sorted(_ours(name, path))}"


def _sources() -> dict[str, Path]:
    return {**_modules("sparsity_core"), **_modules("app"), **_modules("pages")}


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources().values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _function_lengths(source: str, where: str) -> dict[str, int]:
    """Every function and method in ``source`` (nested ones too) with its length in lines, decorators
    included."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out[f"{where}:{node.lineno} {node.name}"] = node.end_lineno - first + 1
    return out


def test_no_function_is_over_80_lines():
    long = {where: n for path in _sources().values()
            for where, n in _function_lengths(path.read_text(), str(path.relative_to(ROOT))).items()
            if n > MAX_FUNCTION_LINES}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checker_sees_circles_and_function_level_imports():
    """The checks above can fail: a circle through a function-level import is found."""
    tree = ast.parse("def f():\n    from .b import x\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_the_size_checker_counts_whole_functions():
    """A decorated 3-line function counts 4 lines; a nested function is counted on its own as well."""
    lengths = _function_lengths("@dec\ndef f():\n    def g():\n        pass\n", "probe.py")
    assert lengths == {"probe.py:2 f": 4, "probe.py:3 g": 2}
