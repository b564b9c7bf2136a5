"""The dependency rule of the package, checked on its source: arrows point one way.

Every module of ``navistore`` belongs to one layer; a module may import modules of its own layer
and of the layers listed as below it, never above or beside it. Imports are read with ``ast``
from the source, so every one counts: at module level, inside functions, and under
``TYPE_CHECKING``. A second check refuses any import cycle between modules at all.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "navistore"

#: Each layer with the module-name prefixes it holds (the longest prefix wins).
LAYERS: dict[str, tuple[str, ...]] = {
    "data": (
        "navistore",  # the package itself: its version
        "navistore.errors",
        "navistore.keys",
        "navistore.clock",
        "navistore.record",
        "navistore.conflicts",
        "navistore.waiters",
        "navistore.peer_urls",
        "navistore.tokens",
        "navistore.json_documents",
        "navistore.tally",
    ),
    "contract": ("navistore.interfaces",),
    "protocols": ("navistore.protocol", "navistore.hooks", "navistore.links"),
    "store": ("navistore.store", "navistore.watch_hub"),
    "backends": ("navistore.backend",),
    "web": ("navistore.web",),
    "replication": ("navistore.replication",),
    "cache_node": ("navistore.cache_node",),
    "compat": ("navistore.compat",),
    "wiring": (
        "navistore.node",
        "navistore.daemon",
        "navistore.allocator",
        "navistore.gc_tuning",
        "navistore.service_manager",
        "navistore.config_file",
        "navistore.logs",
        "navistore.listening",
        "navistore.tls_endpoint",
        "navistore.tap",
        "navistore.scripts",
        "navistore.metrics",
        "navistore.readiness",
    ),
    "testing": ("navistore.testing",),
}

_BELOW_ALL = {"data", "contract", "protocols"}

#: What each layer may import besides itself. Backends know the contract, never the Store;
#: the web layer, replication and the cache node know the Store, never each other or a
#: backend; only the wiring knows everything, and the public test helpers may use it too.
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    "contract": {"data"},
    "protocols": {"data", "contract"},
    "store": _BELOW_ALL,
    "backends": _BELOW_ALL,
    "web": {*_BELOW_ALL, "store"},
    "replication": {*_BELOW_ALL, "store"},
    "cache_node": {*_BELOW_ALL, "store"},
    "compat": {*_BELOW_ALL, "store", "web"},
    "wiring": set(LAYERS) - {"wiring", "testing"},
    "testing": set(LAYERS) - {"testing"},
}


def module_name(path: Path) -> str:
    """The dotted name of a module of the package, from its file."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """The package modules ``name`` imports, with the line of each import."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "navistore":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "navistore":
                continue
            for alias in node.names:
                # ``from package import submodule`` imports the submodule.
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if candidate in known else base


def layer_of(name: str) -> str:
    """The layer a module belongs to: the one with its longest matching prefix (the bare
    package name matches only itself)."""
    best, length = "", -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            inside = name.startswith(prefix + ".") and prefix != "navistore"
            if (name == prefix or inside) and len(prefix) > length:
                best, length = layer, len(prefix)
    return best


def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    known = modules()
    return {
        name: {target for _line, target in imported(name, path, known) if target != name}
        for name, path in known.items()
    }


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in a layer here, so that the rule covers it."""
    unplaced = [name for name in modules() if layer_of(name) == ""]
    assert unplaced == []


def test_every_import_points_down() -> None:
    """No module imports a module of a layer above its own or beside it."""
    known = modules()
    wrong = []
    for name, path in known.items():
        layer = layer_of(name)
        for line, target in imported(name, path, known):
            target_layer = layer_of(target)
            if target_layer != layer and target_layer not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({layer}) -> {target}")
    assert wrong == [], "\n".join(wrong)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_there_is_no_import_cycle() -> None:
    """No chain of imports leads from a module back to itself, not even one that only type
    checking follows."""
    assert find_cycle(graph()) is None


@pytest.mark.parametrize(
    ("edges", "cyclic"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"a"}}, True),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], cyclic: bool) -> None:
    """The check above can fail: the finder reports a cycle exactly when there is one."""
    found = find_cycle(edges)
    assert (found is not None) is cyclic
    if found is not None:
        assert found[0] == found[-1]


def test_the_rule_refuses_an_upward_import(tmp_path: Path) -> None:
    """The layer check can fail: a backend importing the Store, or the web layer importing
    replication, is against the rule."""
    assert layer_of("navistore.backend.sqlite") == "backends"
    assert "store" not in ALLOWED[layer_of("navistore.backend.sqlite")]
    assert "replication" not in ALLOWED[layer_of("navistore.web.api")]
    assert "web" not in ALLOWED[layer_of("navistore.replication.service")]
    assert layer_of("navistore.somewhere_new") == ""
    source = tmp_path / "navistore" / "backend" / "rogue.py"
    source.parent.mkdir(parents=True)
    source.write_text("from navistore.store import Store\nfrom ..web import api\n")
    found = [target for _line, target in imported("navistore.backend.rogue", source, {})]
    assert found == ["navistore.store", "navistore.web"]
