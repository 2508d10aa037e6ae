"""Import contracts of the production packages, read from the source with ast (nothing imported).

(a) No import cycle between modules. (b) The daemons (fcd_api, fcd_net,
fcd_storage, fcd_vmm) import fcd_common and third-party libraries, never each
other; fcd_common imports none of them. (c) No production module imports the
dev tooling (fcd_dev) or the tests.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a
cycle that only works because one side defers its import is still a cycle.
Relative imports are resolved to absolute names; ``from a import b`` is an edge
to module ``a.b`` if that module exists, else to ``a``.
"""

from __future__ import annotations

import ast
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMON = "fcd_common"
DAEMONS = ("fcd_api", "fcd_net", "fcd_storage", "fcd_vmm")
PRODUCTION = (COMMON, *DAEMONS)
DEV_TOOLING = "fcd_dev"
# tests/ is on sys.path while testing, so its packages are importable by their own names too.
NOT_FOR_PRODUCTION = (DEV_TOOLING, "tests", "fakes")

# Elementary cycles that exist today, each written from its smallest module name.
# Empty since issue #8, deliverable 6 (fcd_storage.store no longer imports the operation
# modules). Nothing may be added here: a new cycle fails the test.
KNOWN_CYCLES: frozenset[tuple[str, ...]] = frozenset()


@dataclass(frozen=True)
class Import:
    src: str
    target: str  # absolute dotted name as imported (``from a import b`` -> ``a.b``)
    path: Path
    line: int

    @property
    def top(self) -> str:
        return self.target.split(".")[0]

    def where(self) -> str:
        path = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{path}:{self.line}"


def package_dirs() -> dict[str, Path]:
    with (REPO / "pyproject.toml").open("rb") as f:
        mapping: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: REPO / rel for name, rel in mapping.items()}


def find_modules(roots: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    found: dict[str, tuple[Path, bool]] = {}
    for pkg, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = [pkg, *path.relative_to(root).with_suffix("").parts]
            is_pkg = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def imports_of(module: str, path: Path, is_pkg: bool) -> Iterator[Import]:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_pkg else module.split(".")[:-1]
                if node.level > len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond {module}")
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                name = base if alias.name == "*" else f"{base}.{alias.name}"
                yield Import(module, name, path, node.lineno)


def all_imports(roots: dict[str, Path]) -> tuple[set[str], list[Import]]:
    modules = find_modules(roots)
    return set(modules), [i for m, (p, pkg) in modules.items() for i in imports_of(m, p, pkg)]


def module_graph(modules: set[str], imports: list[Import]) -> dict[tuple[str, str], Import]:
    """Edges between known modules, each with the first import that makes it."""
    edges: dict[tuple[str, str], Import] = {}
    for imp in imports:
        parts = imp.target.split(".")
        dst = next(
            (n for k in range(len(parts), 0, -1) if (n := ".".join(parts[:k])) in modules), None
        )
        if dst is not None and dst != imp.src:
            edges.setdefault((imp.src, dst), imp)
    return edges


def elementary_cycles(edges: set[tuple[str, str]]) -> set[tuple[str, ...]]:
    """Every simple cycle, written from its smallest node; searched only within strongly
    connected components, so the acyclic bulk of the graph costs nothing."""
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
    reach: dict[str, set[str]] = {}
    for start in succ:
        seen, todo = set(), [start]
        while todo:
            for nxt in succ.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    cycles: set[tuple[str, ...]] = set()
    for start in sorted(n for n in succ if n in reach[n]):
        paths: list[tuple[str, ...]] = [(start,)]
        while paths:
            path = paths.pop()
            for nxt in succ.get(path[-1], ()):
                if nxt == start:
                    cycles.add(path)
                elif nxt > start and nxt not in path and start in reach.get(nxt, ()):
                    paths.append((*path, nxt))
    return cycles


def describe(cycle: tuple[str, ...], edges: dict[tuple[str, str], Import]) -> str:
    hops = zip(cycle, (*cycle[1:], cycle[0]), strict=True)
    return " -> ".join([cycle[0], *(f"{b} ({edges[a, b].where()})" for a, b in hops)])


@pytest.fixture(scope="module")
def production() -> tuple[set[str], list[Import]]:
    return all_imports({p: d for p, d in package_dirs().items() if p in PRODUCTION})


def test_every_package_is_classified() -> None:
    assert set(package_dirs()) == {*PRODUCTION, DEV_TOOLING}, (
        "pyproject.toml maps a package this test does not know: say whether it is "
        "production (COMMON/DAEMONS) or dev tooling"
    )


def test_no_new_import_cycle(production: tuple[set[str], list[Import]]) -> None:
    edges = module_graph(*production)
    cycles = elementary_cycles(set(edges))
    new = sorted(cycles - KNOWN_CYCLES)
    if new:
        pytest.fail("new import cycle(s):\n" + "\n".join(describe(c, edges) for c in new))
    if gone := sorted(KNOWN_CYCLES - cycles):
        warnings.warn(f"KNOWN_CYCLES lists cycles that are gone, remove them: {gone}", stacklevel=1)


def test_daemons_import_only_common(production: tuple[set[str], list[Import]]) -> None:
    bad = [
        f"{i.where()}: {i.src} imports {i.target}"
        for i in production[1]
        if i.top in DAEMONS and i.top != i.src.split(".")[0]
    ]
    if bad:
        pytest.fail("a daemon (or fcd_common) imports another daemon:\n" + "\n".join(bad))


def test_production_never_imports_dev_tooling(production: tuple[set[str], list[Import]]) -> None:
    bad = [
        f"{i.where()}: {i.src} imports {i.target}"
        for i in production[1]
        if i.top in NOT_FOR_PRODUCTION
    ]
    if bad:
        pytest.fail("production code imports dev tooling or tests:\n" + "\n".join(bad))


def test_checker_sees_relative_and_deferred_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nimport os.path\n")
    edges = module_graph(*all_imports({"pkg": pkg}))
    assert set(edges) == {("pkg.a", "pkg.sub.b"), ("pkg.sub", "pkg.sub.b"), ("pkg.sub.b", "pkg.a")}
    assert edges["pkg.a", "pkg.sub.b"].line == 2
    assert elementary_cycles(set(edges)) == {("pkg.a", "pkg.sub.b")}
