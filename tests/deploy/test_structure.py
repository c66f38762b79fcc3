"""The package layout stays layered: no import cycles in drift/ or service/ (imports inside functions
count too), drift/ stays a pure library with no web, database, queue or metrics imports, and no
module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("drift", "service")
NOT_IN_DRIFT = ("fastapi", "sqlalchemy", "service", "procrastinate", "alembic", "psycopg", "uvicorn",
                "prometheus_client")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name in _imports(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and modules[name].name != "__init__.py":
                graph[module].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = _graph()
    assert len(graph) > 50
    assert not _cycles(graph), "\n".join(" -> ".join(c) for c in _cycles(graph))


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_drift_imports_no_web_database_or_queue_code() -> None:
    for module, path in _modules().items():
        if module.startswith("drift"):
            leaked = {n for n in _imports(module, path) if n.split(".")[0] in NOT_IN_DRIFT}
            assert not leaked, (module, leaked)


MAX_MODULE_LINES = 400


def test_no_module_is_over_400_lines() -> None:
    """A module past 400 lines usually does two jobs: split it by responsibility."""
    long = {str(p.relative_to(ROOT)): n for package in ("drift", "service", "client", "experiment")
            for p in (ROOT / package).rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split each by responsibility): {long}"


def test_every_transformers_load_holds_the_process_wide_loading_lock() -> None:
    """`drift.models.LOADING` around every `from_pretrained`/`from_config`: loads swap global state, and
    two threads of one worker loading at once corrupted each other's models."""
    root = Path(__file__).resolve().parents[2]
    unguarded = []
    for path in sorted([*(root / "drift").rglob("*.py"), *(root / "service").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any("LOADING" in ast.unparse(item.context_expr) for item in node.items):
                guarded.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {"from_pretrained", "from_config"} and id(node) not in guarded):
                unguarded.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not unguarded, f"transformers loads outside `with LOADING:` {unguarded}"
