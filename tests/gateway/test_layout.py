"""The gateway's layout holds: no import cycles (TYPE_CHECKING and function-level imports
included), no `isinstance` on a backend class, and a composed gateway that cannot be
changed afterwards."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

import dskit.gateway

ROOT = Path(dskit.gateway.__file__).parent
PACKAGE = "dskit.gateway"
BACKENDS = {"MemoryStreamLog", "RedisStreamLog", "MemoryRateLimiter", "RedisRateLimiter",
            "KeyStore", "RedisKeyStore", "MemoryCache", "RedisCache"}  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        if "_pb" in path.parts:  # generated
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join((PACKAGE, *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in known:
            out.add(node.module)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert _cycle(graph) is None


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_isinstance_on_a_backend() -> None:
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if named & BACKENDS:
                    offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_the_composed_gateway_cannot_be_changed(tmp_path: Path) -> None:
    from dskit.gateway import GatewaySettings
    from dskit.gateway._compose import compose
    from dskit.gateway.backends._log import MemoryStreamLog

    settings = GatewaySettings(store="memory", keys_path=str(tmp_path / "keys.sqlite3"))
    gateway = compose(settings)
    try:
        with pytest.raises(dataclasses.FrozenInstanceError):
            gateway.log = MemoryStreamLog()  # type: ignore[misc]
        assert gateway.runner.gw is gateway.answers  # the runner sees its parts, not the gateway
        assert gateway.answers.fleet is None and gateway.takeover is None
    finally:
        gateway.keys.close()


def test_every_route_dependency_runs_on_the_loop(tmp_path: Path) -> None:
    """FastAPI runs a plain `def` dependency in a worker thread: a thread hop (and GIL
    hand-off) on every request that uses it. Every dependency of every route is async."""
    import inspect

    from fastapi.routing import APIRoute

    from dskit.gateway import GatewaySettings, create_app

    settings = GatewaySettings(store="memory", keys_path=str(tmp_path / "keys.sqlite3"))
    app = create_app(settings)
    sync: set[str] = set()

    def visit(dependant: Any) -> None:
        for dep in dependant.dependencies:
            call = dep.call
            target = call if inspect.isroutine(call) else type(call).__call__
            if not inspect.iscoroutinefunction(target):
                sync.add(getattr(call, "__name__", repr(call)))
            visit(dep)

    for route in app.routes:
        if isinstance(route, APIRoute):
            visit(route.dependant)
    assert sync == set()
