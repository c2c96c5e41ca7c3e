"""The package's shape, kept by tests: imports go one way, no cycles, no `mock` in the package, small files.

Layers, lowest first (a module may import its own layer and the ones below, never above):
    spec -> compiler core (ir, ops) -> frontend (elaboration, builtins) -> compiler stages (analysis, passes,
    transforms, diagrams) -> backends -> pipeline -> cli / testing / docs
Every import counts: module-level, inside a function, or under `if TYPE_CHECKING:` (a type-only import still
says one layer knows another).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnspec"
MAX_LINES = 600

# (layer rank, module prefixes), checked longest prefix first
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("nnspec.errors", "nnspec.atomic", "nnspec.progress", "nnspec.spec")),
    (1, ("nnspec.compiler.ir", "nnspec.compiler.sizes", "nnspec.compiler.ops", "nnspec.compiler.verify")),
    (2, ("nnspec.compiler.frontend", "nnspec.compiler.elaborate", "nnspec.compiler.builtins",
         "nnspec.compiler.static", "nnspec.compiler.hf_config", "nnspec.compiler.weight_map")),
    (3, ("nnspec.compiler", "nnspec.stdlib", "nnspec.diagrams")),
    (4, ("nnspec.backends",)),
    (5, ("nnspec.pipeline", "nnspec.generated", "nnspec.generate")),
    (6, ("nnspec.cli", "nnspec.cli_transforms", "nnspec.testing", "nnspec.docs_gen", "nnspec.__main__",
         "nnspec.commands", "nnspec.distributed", "nnspec.importer", "nnspec.web", "nnspec.export")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int | None:
    best: tuple[int, int] | None = None   # (prefix length, rank)
    for rank, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    return None if best is None else best[1]


def imports_of(path: Path) -> set[str]:
    """Every nnspec module `path` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("nnspec"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("nnspec"):
                out.add(target)
                # `from nnspec.compiler import ops` imports the submodule
                out.update(f"{target}.{a.name}" for a in node.names if (PACKAGE.parent / Path(
                    *f"{target}.{a.name}".split("."))).with_suffix(".py").exists() or (PACKAGE.parent / Path(
                        *f"{target}.{a.name}".split("."))).is_dir())
    return out


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(target: str) -> str | None:
    """The module file an import names (a package's `__init__`), or None for a name outside the package."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for name, path in MODULES.items():
        g.add_node(name)
        for target in imports_of(path):
            resolved = resolve(target)
            # a package's __init__ imported for one of its modules is not an edge to itself
            if resolved and resolved != name and not name.startswith(resolved + "."):
                g.add_edge(name, resolved)
    return g


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if m != "nnspec" and layer(m) is None)
    assert not missing, f"modules outside every layer (add them to LAYERS in this test): {missing}"


def test_imports_never_go_up_a_layer() -> None:
    g = import_graph()
    upward = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a, b in g.edges
                    if a != "nnspec" and layer(a) is not None and layer(b) is not None and layer(b) > layer(a))
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_nothing_under_the_compiler_imports_a_backend() -> None:
    g = import_graph()
    bad = sorted(f"{a} -> {b}" for a, b in g.edges if a.startswith("nnspec.compiler") and
                 b.startswith("nnspec.backends"))
    assert not bad, bad


def test_no_import_cycles() -> None:
    g = import_graph()
    # a package's __init__ re-exporting its own modules is not a cycle between ideas
    cycles = [c for c in nx.simple_cycles(g) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join([*c, c[0]]) for c in sorted(cycles))


def test_the_spec_layer_and_checking_never_import_torch() -> None:
    for name, path in MODULES.items():
        if layer(name) is not None and layer(name) <= 3:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{name} imports torch"


def test_mock_is_not_used_in_the_package() -> None:
    users = [m for m, p in MODULES.items() if "mock" in p.read_text(encoding="utf-8")]
    assert not users, f"`mock` appears in {users}: observe stages through the pipeline instead"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_small(path: Path) -> None:
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (budget {MAX_LINES}): split it along its ideas"


def test_the_layer_rules_catch_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import from compiler into backends is upward; the reverse is not."""
    assert layer("nnspec.compiler.passes.dce") == 3 and layer("nnspec.backends.torch.codegen") == 4
    assert layer("nnspec.compiler.ops.nn") == 1 and layer("nnspec.compiler.ir") == 1
    assert layer("nnspec.spec.parser") == 0 and layer("nnspec.cli") == 6
    probe = PACKAGE / "compiler" / "passes" / "dce.py"
    got = imports_of(probe)
    assert any(t.startswith("nnspec.compiler") for t in got)
