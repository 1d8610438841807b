"""The folder tree is the architecture: who may import whom, read from the source (ast), not from a run.

    messages/   the typed messages: imports nothing else of the project
    bus/*.py    the NATS runtime (connections, embedded server, streams, KV, the actor runtime)
    bus/ops/    operator tools built on the runtime (CLI, `execbus up`, demo, replay, redrive, simulation,
                start-up reconciliation): the runtime never imports them
    actors/     one module per actor; an actor imports no other actor, only the pure rules of `actors.risk`
                and the pure decision cores of `actors.strategies`
    venues/     venue gateways and the paper exchange
    bench/      benchmarks: plugged into the CLI through an entry point, never imported by bus/

Every import counts, the module-level ones and those inside functions (a lazy import is still a dependency);
those under `if TYPE_CHECKING:` count for the layering rules but not for cycles (they never run).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("actors", "messages", "bus", "venues", "bench")


@dataclass(frozen=True)
class Import:
    source: str
    """The importing module."""
    target: str
    """The imported project module (the longest module name the import resolves to)."""
    line: int
    typing_only: bool

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({_path(self.source)}:{self.line})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                out[_module_name(path)] = path
    return out


def _path(module: str) -> str:
    return str(_modules()[module].relative_to(ROOT))


def _is_package(module: str) -> bool:
    return _modules()[module].name == "__init__.py"


def _resolve(name: str) -> str | None:
    """The project module `name` names, or the package/module it is an attribute of; None outside the project."""
    modules = _modules()
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _typing_only_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the statements under `if TYPE_CHECKING:` (or `if typing.TYPE_CHECKING:`)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    for inner in ast.walk(stmt):
                        if hasattr(inner, "lineno"):
                            lines.add(inner.lineno)
    return lines


@cache
def _imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        typing_only = _typing_only_lines(tree)
        # The package a relative import starts from: the module itself for a package's __init__.
        here = module.split(".") if _is_package(module) else module.split(".")[:-1]
        for node in ast.walk(tree):  # every import, at module level and inside functions and classes
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                # `from bus.ops import cli` depends on the module bus.ops.cli; `from messages import X` on the
                # package (`_resolve` keeps the longest module name). A package's __init__ imported on the way
                # is not counted: that would make every package a cycle with its own modules.
                names = [f"{base_name}.{alias.name}" for alias in node.names if alias.name != "*"] or [base_name]
            else:
                continue
            for name in names:
                target = _resolve(name)
                if target is not None and target != module:
                    found.append(Import(module, target, node.lineno, node.lineno in typing_only))
    # Keep one edge per (source, target), a run-time one if there is any.
    unique: dict[tuple[str, str], Import] = {}
    for imp in found:
        key = (imp.source, imp.target)
        if key not in unique or (unique[key].typing_only and not imp.typing_only):
            unique[key] = imp
    return tuple(unique.values())


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if color.get(nxt, WHITE) == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if color.get(nxt, WHITE) == WHITE:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        color[node] = BLACK
        return None

    for node in sorted(graph):
        if color[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _violations(rule) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(imp) for imp in _imports() if rule(imp)]


def test_the_project_is_found() -> None:
    modules = _modules()
    for name in ("bus.runtime", "bus.ops", "bus.ops.cli", "messages", "actors.risk", "venues.gateway", "bench.cli"):
        assert name in modules, f"{name} not found under {ROOT}"
    assert any(imp.source == "bus.ops.cli" and imp.target == "bus.ops.system" for imp in _imports()), (
        "the function-level imports of bus/ops/cli.py were not seen"
    )


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {module: set() for module in _modules()}
    lines: dict[tuple[str, str], Import] = {}
    for imp in _imports():
        if not imp.typing_only:
            graph[imp.source].add(imp.target)
            lines[(imp.source, imp.target)] = imp
    reports = []
    while (cycle := _find_cycle(graph)) is not None and len(reports) < 20:
        steps = "\n    ".join(str(lines[(a, b)]) for a, b in zip(cycle, cycle[1:], strict=False))
        reports.append(f"{' -> '.join(cycle)}:\n    {steps}")
        graph[cycle[-2]].discard(cycle[-1])  # cut it, to report the next one too
    if reports:
        pytest.fail("import cycles between project modules:\n  " + "\n  ".join(reports))


def test_bus_never_imports_bench() -> None:
    """`execbus bench` is an entry point of the `execbus.commands` group, found at run time."""
    bad = _violations(lambda imp: _in(imp.source, "bus") and _in(imp.target, "bench"))
    assert not bad, "bus/ imports bench/:\n  " + "\n  ".join(bad)


def test_the_runtime_never_imports_the_operator_tools() -> None:
    bad = _violations(lambda imp: _in(imp.source, "bus") and not _in(imp.source, "bus.ops") and _in(imp.target, "bus.ops"))
    assert not bad, "a runtime module (bus/*.py) imports bus.ops:\n  " + "\n  ".join(bad)


def test_messages_import_nothing_else_of_the_project() -> None:
    bad = _violations(lambda imp: _in(imp.source, "messages") and not _in(imp.target, "messages"))
    assert not bad, "messages/ imports the rest of the project:\n  " + "\n  ".join(bad)


def test_actors_import_no_other_actor() -> None:
    """Actors talk through messages only; what they share is pure: the risk rules and the strategies' cores."""

    def shared(target: str) -> bool:
        return _in(target, "actors.risk") or _in(target, "actors.strategies")

    bad = _violations(lambda imp: _in(imp.source, "actors") and _in(imp.target, "actors") and not shared(imp.target))
    assert not bad, "an actor imports another actor module:\n  " + "\n  ".join(bad)
