"""The package's shape: imports point one way, and no module reaches into another's
private names. Read with `ast` from the source, so static imports count too (also those
under `if TYPE_CHECKING:` and inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import balance_refill

PACKAGE = Path(balance_refill.__file__).parent
DRIVER_MODULES = {"balance_refill._store", "balance_refill._connect"}  # _connect opens the client
NAMED_TUPLE_API = {"_replace", "_asdict", "_make", "_fields"}
"""Public methods of named tuples, despite the underscore."""
"""The only modules allowed to import the driver's write/read API (`pymongo`)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p))
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".")
    is_package = (PACKAGE.parent / Path(*package) / "__init__.py").exists()
    base = package if is_package else package[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(imported module, names imported from it) for every import in `tree`."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            found.append((target, [a.name for a in node.names]))
            for alias in node.names:  # `from . import _schema` imports a module
                found.append((f"{target}.{alias.name}", []))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for target, _ in _imports(name, tree):
            if target in modules and target not in (name, "balance_refill"):
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    """No module imports (directly or through others) a module that imports it back."""
    assert _cycle(_graph()) is None


def test_cycle_finder_finds_a_cycle() -> None:
    """The cycle check itself can fail."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _private_uses(module: str, tree: ast.Module) -> list[str]:
    problems = []
    for target, names in _imports(module, tree):
        if not target.startswith("balance_refill") or target == module:
            continue
        problems += [
            f"{module}: from {target} import {n}"
            for n in names
            if n.startswith("_") and not n.startswith("__") and not _is_module(f"{target}.{n}")
        ]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in NAMED_TUPLE_API
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            problems.append(f"{module}:{node.lineno}: .{node.attr}")
    return problems


def test_no_module_uses_another_modules_private_names() -> None:
    """`from .x import _private` and `obj._private` (other than self's) appear nowhere.

    Private modules (`_schema`, `_store`, ...) are fine to import; private names inside
    any module are not."""
    problems = [p for name, tree in _modules().items() for p in _private_uses(name, tree)]
    assert problems == []


def test_only_the_store_talks_to_the_driver() -> None:
    """pymongo's client, collection and error API is used by `_store` alone (bson values
    such as ObjectId are plain data and allowed anywhere)."""
    users = {
        name
        for name, tree in _modules().items()
        for target, _ in _imports(name, tree)
        if target.split(".")[0] == "pymongo" and not name.startswith("balance_refill.cli")
    }
    assert users <= DRIVER_MODULES


def test_production_never_imports_the_test_doubles() -> None:
    """`balance_refill.testing` is for host apps' tests; the library never imports it."""
    importers = {
        name
        for name, tree in _modules().items()
        for target, _ in _imports(name, tree)
        if target == "balance_refill.testing" and name != "balance_refill.testing"
    }
    assert importers == set()


def test_private_use_finder_finds_private_use() -> None:
    """The private-name check itself can fail."""
    tree = ast.parse("from ._schema import _num\nx = other._secret\ny = self._fine\n")
    assert _private_uses("balance_refill.demo", tree) == [
        "balance_refill.demo: from balance_refill._schema import _num",
        "balance_refill.demo:2: ._secret",
    ]
