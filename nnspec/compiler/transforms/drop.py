"""drop: remove residual sub-layers by parameter path (FinerCut-style attention/FFN removal).

`drop(model, ["h.5.attn", "h.7.mlp"])` removes, from each use a path names, the residual branch there: a
block call or parameterised op `f` whose value is used only by an `add` with the stream it reads
(`x += f(norm(x))`). The add goes, and so does everything only the branch used (its input norm and the
branch's parameters).

Contract: the result computes what the original computes with those branches contributing zero, which is
what zeroing a branch's output projection (weight and bias) gives when the branch ends in a linear. Parameter
count and FLOPs shrink by exactly the removed nodes. Other uses of the block keep their template: a
repeat's changed iteration runs a variant (the repeat's `variants`), so parameter paths stay `h.{i}...`.
Anything that is not such a branch is refused, naming the path. The stream node the add read records the
removed branch's scope in `meta["dropped"]` (a tuple), for the diagrams.
"""

from __future__ import annotations

import networkx as nx

from nnspec.compiler.graph_edits import erase_unused
from nnspec.compiler.ir import Graph, Model, Node
from nnspec.compiler.transforms.rewrite import TransformError, mark, scope_of, specialize, unknown_path


def residual_add(graph: Graph, node: Node) -> tuple[Node, str] | None:
    """(the add, the stream operand) when `node`'s value is only added to a stream it was computed from."""
    users = graph.users(node.name)
    if len(users) != 1 or node.name in graph.outputs:
        return None
    add = users[0]
    if add.op != "add" or add.inputs.count(node.name) != 1:
        return None
    stream = add.inputs[1 - add.inputs.index(node.name)]
    if add.type != node.type or graph[stream].type != add.type or not nx.has_path(graph.nx, stream, node.name):
        return None
    return add, stream


def drop_branches(graph: Graph, names: tuple[str, ...]) -> list[Node]:
    """Remove the residual branches rooted at `names` (in place); returns every node removed."""
    removed: list[Node] = []
    mark(graph.meta, "drop " + ", ".join(scope_of(graph, graph[n]) or n for n in names))
    for name in names:
        found = residual_add(graph, graph[name])
        assert found is not None, f"{name} was checked to be a residual branch"
        add, stream = found
        # the diagrams draw the removed branch as a ghost hanging off the stream it was added to
        meta = graph[stream].meta
        meta["dropped"] = (*meta.get("dropped", ()), scope_of(graph, graph[name]) or name)
        read = nx.ancestors(graph.nx, add.name)   # what may go with the add: only what it read, directly or not
        graph.replace_uses(add.name, stream)
        graph.erase(add.name)
        removed.append(add)
        # the branch's parameters and calls go with it; code that was unused before the drop stays
        removed += erase_unused(graph, with_state=True, among=read)
    return removed


def drop(model: Model, paths: list[str] | tuple[str, ...]) -> Model:
    """`model` without the residual branches at `paths` (see the module docstring)."""
    wanted = dict.fromkeys(paths)
    found: set[str] = set()

    def decide(graph: Graph, prefix: str) -> tuple[str, ...] | None:
        names = []
        for node in graph:
            scope = scope_of(graph, node)
            path = prefix + scope if scope else None
            if path in wanted:
                if residual_add(graph, node) is None:
                    raise TransformError(f"--drop {path}: {path} is not a residual branch; only a sub-layer whose "
                                         "value is added to the stream it reads (`x += f(x)`) can be dropped")
                found.add(path)
                names.append(node.name)
        return tuple(names) or None

    def edit(graph: Graph, names: tuple[str, ...]) -> None:
        drop_branches(graph, names)

    def tag(names: tuple[str, ...]) -> str:
        return "drop_" + "_".join(n.replace(".", "_") for n in names)

    out = specialize(model, decide, edit, tag, note="drop " + ", ".join(wanted))
    missing = [p for p in wanted if p not in found]
    if missing:
        raise unknown_path("--drop", missing[0], model, "residual sub-layer")
    out.transforms.append("drop " + " ".join(wanted))
    return out
