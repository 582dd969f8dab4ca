"""The layers import one way: values and errors never load grpc, and errors imports nothing of ours."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import grpc_messenger

PACKAGE = Path(grpc_messenger.__file__).parent


def _imports(module: str) -> set[str]:
    """Top-level names imported by one module of the package (its own file, not its package's __init__)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    source = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _closure(module: str) -> set[str]:
    """Every module `module` reaches through imports, following only the package's own modules."""
    seen: set[str] = set()
    todo = [module]
    for _ in range(1000):  # bounded: the package has far fewer modules
        if not todo:
            return seen
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _imports(name):
            own = imported.startswith("grpc_messenger.")
            exists = PACKAGE.joinpath(*imported.split(".")[1:]).with_suffix(".py").exists()
            if own and exists and "proto" not in imported:
                todo.append(imported)
            elif not own:
                seen.add(imported)
    raise AssertionError("import graph too large")


@pytest.mark.parametrize(
    "module",
    ["grpc_messenger.errors", "grpc_messenger.model", "grpc_messenger.config", "grpc_messenger.store.sqlite"],
)
def test_values_errors_and_store_never_load_grpc(module: str) -> None:
    reached = _closure(module)
    assert not {name for name in reached if name == "grpc" or name.startswith("grpc.")}, reached


def test_errors_import_nothing_of_ours() -> None:
    assert not {name for name in _imports("grpc_messenger.errors") if name.startswith("grpc_messenger")}
