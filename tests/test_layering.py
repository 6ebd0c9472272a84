"""The house's floors (docs/architecture.md), enforced on the source with ``ast``: every import counts,
function-level ones included.

* the core (``sparsity_core``) never imports ``app``, ``pages`` or ``streamlit``;
* no import circles inside the core, between modules or between its floors (packages);
* each floor of the core imports only the floors below it (``FLOORS``), and its own modules;
* ``models/builder.py`` imports nothing else of ours but the errors;
* only a handful of modules live at the core's root (``ROOT_MODULES``);
* pages import only ``app`` (never ``sparsity_core`` past it), and ``app`` never imports ``pages``;
* the app's rooms: ``figures`` and ``text`` are pure (no Streamlit), and the app's rooms import only the
  rooms below them (``APP_ROOMS``); nothing in the core names a file of the app;
* no module of ``sparsity_core``, ``app`` or ``pages`` is over 600 lines (about 400 is the hint: a module's
  size follows its concept, so the test only stops a concept that has grown into several), no function
  over 80.
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


def test_models_builder_imports_nothing_else_of_ours():
    graph = _core_graph()
    assert graph["sparsity_core.models.builder"] <= {"sparsity_core.errors"}


#: The core's floors, bottom up: a floor imports only the floors below it (and its own modules).
FLOORS = {
    "errors": 0, "_compat": 0,
    "masks": 1,
    "models": 2, "data": 2,
    "dst": 3, "history": 3,
    "checkpoint": 4,
    "training": 5, "analysis": 5,
    "runs": 6,
    "trackers": 1, "record": 5,
    "cli": 7, "__main__": 8, "": 8,  # "" is the package's face (sparsity_core/__init__.py)
}
ROOT_MODULES = {"__init__", "__main__", "_compat", "errors", "cli"}


def _floor_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_floor_imports_only_the_floors_below_it():
    graph = _core_graph()
    assert set(map(_floor_of, graph)) <= set(FLOORS), f"floors not in FLOORS: {set(map(_floor_of, graph)) - set(FLOORS)}"
    upward = sorted((a, b) for a, targets in graph.items() for b in targets
                    if _floor_of(a) != _floor_of(b) and FLOORS[_floor_of(b)] >= FLOORS[_floor_of(a)]
                    and _floor_of(b) != "")  # a module may read the package's __version__
    assert upward == [], f"imports that do not go down a floor: {upward}"


def test_only_a_handful_of_modules_live_at_the_cores_root():
    root = {p.stem for p in (ROOT / "sparsity_core").glob("*.py")}
    assert root <= ROOT_MODULES, f"modules at the core's root: {sorted(root - ROOT_MODULES)}"


#: The app's rooms, bottom up: pure figures and text, cached data access, the Retrain machinery,
#: widgets (Streamlit page furniture); the root modules (settings, errors) are below every room.
APP_ROOMS = {"settings": 0, "errors": 0, "figures": 1, "text": 1, "loaders": 2, "retrain": 3, "widgets": 4,
             "main": 5, "": 5}
PURE_ROOMS = ("figures", "text")


def test_the_apps_rooms_import_downward_and_figures_are_pure():
    mods = _modules("app")
    for name, path in mods.items():
        room = name.split(".")[1] if "." in name else ""
        assert room in APP_ROOMS, f"{path.relative_to(ROOT)}: not in a room of APP_ROOMS"
        imported = _imports(name, path)
        if room in PURE_ROOMS:
            assert not {t for t in imported if t.split(".")[0] == "streamlit"}, f"{path.relative_to(ROOT)} imports streamlit"
        for target in {t for t in imported if t in mods and t != name}:
            other = target.split(".")[1] if "." in target else ""
            if other in ("", room):
                continue
            assert APP_ROOMS[other] < APP_ROOMS[room], f"{path.relative_to(ROOT)} imports {target} (a room above)"


def test_the_core_names_nothing_of_the_app():
    for path in (ROOT / "sparsity_core").rglob("*.py"):
        text = path.read_text()
        for name in ("app/", "pages/"):
            assert name not in text, f"{path.relative_to(ROOT)} names {name!r}, a file of the app"


FIRST_PARTY = ("sparsity_core", "app", "pages", "scripts", "benchmarks", "tests")
MAX_MODULE_LINES = 600
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


def test_no_module_is_over_600_lines():
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
