"""bagbot's import contracts, checked in the test suite as well as by ``lint-imports``.

The contracts live once, in ``pyproject.toml`` (``[tool.importlinter]``; the layers and why
are in ``docs/architecture.md``). ``lint-imports`` checks them in the lint session; this
module checks the same table on an import graph read with :mod:`ast`, so an import that
breaks a layer also fails ``pytest``. The graph is read the way import-linter's (grimp) is:
imports inside functions count, those under ``if TYPE_CHECKING:`` do not, ``from pkg import
sub`` imports ``pkg.sub``, and another distribution counts by its top-level name.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
    "tool"]["importlinter"]
CONTRACTS: dict[str, dict[str, Any]] = {c["id"]: c for c in CONFIG["contracts"]}
DOC = ROOT / "docs" / "architecture.md"

Graph = dict[str, set[str]]  # importer -> what it imports

_COMMON = {"id", "name", "type", "ignore_imports", "unmatched_ignore_imports_alerting"}
_OPTIONS = {
    "layers": _COMMON | {"layers", "containers", "exhaustive", "exhaustive_ignores"},
    "forbidden": _COMMON | {"source_modules", "forbidden_modules"},
}


# -- the graph ------------------------------------------------------------------------------


def package_modules(parent: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (in ``parent``): ``.py`` files in directories that have an
    ``__init__.py``, as grimp finds them."""
    modules: dict[str, Path] = {}

    def walk(directory: Path, name: str) -> None:
        for path in sorted(directory.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                walk(path, f"{name}.{path.name}")
            elif path.is_file() and path.suffix == ".py":
                modules[name if path.stem == "__init__" else f"{name}.{path.stem}"] = path

    walk(parent / package, package)
    return modules


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``node``, at any depth, except under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and ast.unparse(child.test) in {
                "TYPE_CHECKING", "typing.TYPE_CHECKING"}:
            for statement in child.orelse:
                yield from _import_nodes(ast.Module(body=[statement], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _target(name: str, modules: Mapping[str, Path], package: str) -> str:
    """The graph node ``name`` stands for: the longest internal module it names, or the
    top-level name of another distribution."""
    if name.split(".")[0] != package:
        return name.split(".")[0]
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def import_graph(parent: Path, package: str) -> Graph:
    """Who imports whom in ``package``."""
    modules = package_modules(parent, package)
    graph: Graph = {}
    for module, path in modules.items():
        here = module if path.stem == "__init__" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(_target(alias.name, modules, package) for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else _target(base, modules, package))
        graph[module] = found - {module}
    return graph


# -- the contracts --------------------------------------------------------------------------


def _members(name: str, nodes: set[str]) -> set[str]:
    """``name`` and, for a package, everything under it."""
    return {node for node in nodes if node == name or node.startswith(f"{name}.")}


def _chains(graph: Graph, start: str) -> dict[str, list[str]]:
    """Every module reachable from ``start``, with the shortest import chain to it."""
    chains = {start: [start]}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        for there in sorted(graph.get(here, ())):
            if there not in chains:
                chains[there] = [*chains[here], there]
                queue.append(there)
    return chains


def _without_ignored(contract: Mapping[str, Any], graph: Graph) -> tuple[Graph, list[str]]:
    """The graph less the contract's ``ignore_imports``, and what to say about ignores that
    match no import."""
    kept = {importer: set(imported) for importer, imported in graph.items()}
    problems = []
    for entry in contract.get("ignore_imports", []):
        importer, _, imported = (part.strip() for part in entry.partition("->"))
        assert "*" not in entry, f"wildcards are not supported here: {entry}"
        if imported in kept.get(importer, set()):
            kept[importer].discard(imported)
        elif contract.get("unmatched_ignore_imports_alerting", "error") == "error":
            problems.append(f"ignored import {entry} matches no import")
    return kept, problems


def _layers(contract: Mapping[str, Any], graph: Graph) -> list[str]:
    containers = contract.get("containers", [])
    assert len(containers) == 1, "one container: bagbot_core"
    container = containers[0]
    nodes = set(graph) | {m for imported in graph.values() for m in imported}
    level: dict[str, tuple[int, str, bool]] = {}  # module -> (layer, sibling, independent)
    declared = set()
    for index, raw in enumerate(contract["layers"]):
        independent = ":" not in raw
        for tail in (t.strip() for t in re.split(r"[|:]", raw)):
            declared.add(tail)
            for module in _members(f"{container}.{tail}", nodes):
                level[module] = (index, tail, independent)
    problems, chains = [], []
    if contract.get("exhaustive"):
        children = {m.split(".")[1] for m in graph if m.startswith(f"{container}.")}
        for tail in sorted(children - declared - set(contract.get("exhaustive_ignores", []))):
            problems.append(f"{container}.{tail} is not in any layer")
    for module in sorted(level):
        index, sibling, independent = level[module]
        for target, chain in sorted(_chains(graph, module).items()):
            if target not in level:
                continue
            t_index, t_sibling, _ = level[target]
            if t_index < index or (t_index == index and independent and t_sibling != sibling):
                chains.append(chain)
    return problems + _essential(chains)


def _forbidden(contract: Mapping[str, Any], graph: Graph) -> list[str]:
    nodes = set(graph) | {m for imported in graph.values() for m in imported}
    sources = set().union(*(_members(s, nodes) for s in contract["source_modules"]))
    forbidden = set().union(*(_members(f, nodes) for f in contract["forbidden_modules"]))
    chains = []
    for source in sorted(sources):
        for target, chain in sorted(_chains(graph, source).items()):
            if target in forbidden:
                chains.append(chain)
    return _essential(chains)


def _essential(chains: list[list[str]]) -> list[str]:
    """The chains that do not merely extend another one (``a -> b -> c`` adds nothing to a
    broken ``b -> c``), as text."""
    texts = {" -> ".join(chain) for chain in chains}
    return sorted(text for text in texts
                  if not any(other != text and f" {other} " in f" {text} " for other in texts))


def broken(contract: Mapping[str, Any], graph: Graph) -> list[str]:
    """What breaks ``contract`` in ``graph``: one line per import chain (or other problem)."""
    unknown = set(contract) - _OPTIONS[contract["type"]]
    assert not unknown, f"options this check does not implement: {sorted(unknown)}"
    kept, problems = _without_ignored(contract, graph)
    check = _layers if contract["type"] == "layers" else _forbidden
    return problems + check(contract, kept)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT, CONFIG["root_package"])


def _with(graph: Graph, *edges: tuple[str, str]) -> Graph:
    changed = {importer: set(imported) for importer, imported in graph.items()}
    for importer, imported in edges:
        changed.setdefault(importer, set()).add(imported)
    return changed


# -- the tests ------------------------------------------------------------------------------


def test_the_config_uses_only_what_this_check_implements() -> None:
    """The check reads exactly these options: what it does not implement must not be
    configured (a contract nobody checks in the test suite would pass silently)."""
    assert CONFIG["include_external_packages"] is True
    assert CONFIG["exclude_type_checking_imports"] is True
    assert set(CONFIG) == {"root_package", "include_external_packages",
                           "exclude_type_checking_imports", "contracts"}


@pytest.mark.parametrize("contract_id", sorted(CONTRACTS))
def test_contract_holds(graph: Graph, contract_id: str) -> None:
    problems = broken(CONTRACTS[contract_id], graph)
    assert not problems, (f"{CONTRACTS[contract_id]['name']} -- broken by:\n  "
                          + "\n  ".join(problems[:30]))


def test_an_upward_import_breaks_the_layers(graph: Graph) -> None:
    changed = _with(graph, ("bagbot_core.money", "bagbot_core.router"))
    problems = broken(CONTRACTS["layers"], changed)
    assert "bagbot_core.money -> bagbot_core.router" in problems


def test_an_upward_chain_through_a_module_outside_the_layers_breaks_them(graph: Graph) -> None:
    changed = _with(graph, ("bagbot_core.errors", "bagbot_core"),
                    ("bagbot_core", "bagbot_core.router"))
    problems = broken(CONTRACTS["layers"], changed)
    assert "bagbot_core.errors -> bagbot_core -> bagbot_core.router" in problems


def test_independent_siblings_may_not_import_each_other(graph: Graph) -> None:
    changed = _with(graph, ("bagbot_core.router", "bagbot_core.plugin"))
    assert "bagbot_core.router -> bagbot_core.plugin" in broken(CONTRACTS["layers"], changed)


def test_a_module_without_a_layer_breaks_the_layers(graph: Graph) -> None:
    changed = _with(graph, ("bagbot_core.newcomer", "bagbot_core.errors"))
    assert "bagbot_core.newcomer is not in any layer" in broken(CONTRACTS["layers"], changed)


def test_a_known_wart_is_ignored_only_while_it_exists(graph: Graph) -> None:
    changed = {importer: set(imported) for importer, imported in graph.items()}
    changed["bagbot_core.migrations.env"].discard("bagbot_core.paper.models")
    assert any("matches no import" in p for p in broken(CONTRACTS["layers"], changed))


def test_a_database_library_below_persistence_breaks_light_core(graph: Graph) -> None:
    direct = _with(graph, ("bagbot_core.orders", "sqlalchemy"))
    assert "bagbot_core.orders -> sqlalchemy" in broken(CONTRACTS["light-core"], direct)
    indirect = _with(graph, ("bagbot_core.settings", "bagbot_core.db"))
    assert ("bagbot_core.settings -> bagbot_core.db -> sqlalchemy"
            in broken(CONTRACTS["light-core"], indirect))


def test_a_core_module_importing_a_plugin_breaks_no_plugin(graph: Graph) -> None:
    changed = _with(graph, ("bagbot_core.cli", "bagbot_coinbase"))
    assert "bagbot_core.cli -> bagbot_coinbase" in broken(CONTRACTS["no-plugin"], changed)


def test_the_router_importing_a_built_in_connector_breaks_its_contract(graph: Graph) -> None:
    changed = _with(graph, ("bagbot_core.router", "bagbot_core.paper.connector"))
    assert ("bagbot_core.router -> bagbot_core.paper.connector"
            in broken(CONTRACTS["router-knows-contracts"], changed))


def test_every_kind_of_import_is_read(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text("from .. import low\n")
    (package / "low.py").write_text("")
    (package / "types.py").write_text("")
    (package / "notapackage").mkdir()
    (package / "notapackage" / "x.py").write_text("import pkg.top\n")
    (package / "top.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import sqlalchemy.orm\n"
        "from pkg.sub import leaf\n"
        "from pkg.low import thing\n"
        "if TYPE_CHECKING:\n"
        "    from pkg import types\n"
        "def f():\n"
        "    import pkg.sub\n"
    )
    assert import_graph(tmp_path, "pkg") == {
        "pkg": set(),
        "pkg.low": set(),
        "pkg.types": set(),
        "pkg.sub": {"pkg.sub.leaf"},
        "pkg.sub.leaf": {"pkg.low"},
        "pkg.top": {"typing", "sqlalchemy", "pkg.sub.leaf", "pkg.low", "pkg.sub"},
    }


def test_the_graph_is_the_one_import_linter_checks(graph: Graph) -> None:
    """Where import-linter is installed (``bagbot-core[dev]``), its own graph must equal
    this one, so both run the same contracts on the same imports."""
    grimp = pytest.importorskip("grimp")
    theirs = grimp.build_graph(CONFIG["root_package"], include_external_packages=True,
                               exclude_type_checking_imports=True, cache_dir=None)
    assert {m: theirs.find_modules_directly_imported_by(m) for m in theirs.modules
            if m.startswith(CONFIG["root_package"])} == graph


def test_the_architecture_page_shows_every_layer_module() -> None:
    text = DOC.read_text(encoding="utf-8")
    diagram = text.split("```text", 1)[1].split("```", 1)[0]
    tails = {tail.strip() for raw in CONTRACTS["layers"]["layers"]
             for tail in re.split(r"[|:]", raw)}
    missing = sorted(t for t in tails if not re.search(rf"(?<![\w.]){t}(?![\w])", diagram))
    assert not missing, f"docs/architecture.md's diagram does not show {missing}"
