"""Rotary tables as values of their own: `rotary(x, positions)` becomes `rotary(x, positions, cos, sin)` with
`cos, sin = rotary_tables(positions)`, so the tables are graph values the other passes can share and move.

Why: each rotary computed its cos/sin tables itself, twice per attention layer in Llama (once for the queries, once
for the keys, same positions) and again in every layer, where Hugging Face computes them once per forward. As values,
`cse` merges the query's and the key's tables (both are made from the same positions: a relabelled `positions[B, S]`
is traced back to the tensor it relabels, and the tables relabelled the same way) and `hoist-invariant` moves them
out of the repeated layers. A rotary without positions rotates at 0, 1, ...: it gets an `arange` over its position
axis, which is what it meant (and what incremental decoding already reads as the new tokens' positions); rotations
along axes of equal size (Qwen's queries along T, keys along S) share one, relabelled.

Why sound: `rotary_tables` computes exactly the tables the rotary computed for itself (the same runtime helper, in
float32, cast to x's dtype where the rotation reads them, as the helper cast them), and the rotation is unchanged;
a relabel moves no element, so tables of the relabelled positions are the tables of the positions relabelled. Both
styles read the same half-layout tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.ir import Graph, Node, TensorType
from nnspec.compiler.passes.base import Context


@dataclass(frozen=True)
class RotaryTables:
    name: str = "rotary-tables"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        done = []
        aranges: list[str] = []   # the positions 0, 1, ... made here, shared by rotations along equal-sized axes
        for node in [n for n in graph if n.op == "rotary" and len(n.inputs) <= 2]:
            _split(ctx, graph, node, aranges)
            done.append(node.name)
        if done:
            ctx.explain.rewrite(self.name, graph, graph[done[0]], f"the cos/sin tables of {', '.join(done)} are "
                                "computed by rotary_tables nodes, which cse merges and hoist-invariant moves")
        return graph, bool(done)


def _split(ctx: Context, graph: Graph, node: Node, aranges: list[str]) -> None:
    x = graph[node.inputs[0]].tensor_type
    dim = x.axis(node.attrs["dim"])
    assert dim is not None
    if len(node.inputs) == 1:
        pos = x.axis(node.attrs["pos"])
        assert pos is not None
        same = [a for a in aranges if ctx.sizes.equal(graph[a].tensor_type.axes[0].size, pos.size) is True]
        if same:   # the keys' S along the queries' T: the same positions, relabelled
            view = {"perm": (0,), "axes": (pos,)}
            positions = graph.insert_before(node.name, "rearrange", [same[0]], view,
                                            ctx.infer("rearrange", [graph[same[0]].type], view), node.span,
                                            hint="positions")
        else:
            positions = graph.insert_before(node.name, "arange", [], {"axis": pos},
                                            ctx.infer("arange", [], {"axis": pos}), node.span, hint="positions")
            aranges.append(positions.name)
        _append_input(graph, node, positions.name)
    positions = node.inputs[1]
    root = _unrelabelled(ctx, graph, positions)
    attrs = {"dim": dim, "base": node.attrs["base"]}
    tables = graph.insert_before(node.name, "rotary_tables", [root], attrs,
                                 ctx.infer("rotary_tables", [graph[root].type], attrs), node.span, hint="rope")
    want = graph[positions].tensor_type
    for index, hint in ((0, "cos"), (1, "sin")):
        table = graph.insert_before(node.name, "getitem", [tables.name], {"index": index},
                                    tables.type[index], node.span, hint=hint)  # type: ignore[index]
        if root != positions:   # the tables of the relabelled positions: the same view of them
            axes = (*want.axes, dim)
            view = {"perm": tuple(range(len(axes))), "axes": axes}
            table = graph.insert_before(node.name, "rearrange", [table.name], view,
                                        ctx.infer("rearrange", [table.type], view), node.span, hint=hint)
        _append_input(graph, node, table.name)


def _unrelabelled(ctx: Context, graph: Graph, name: str) -> str:
    """The tensor `name` relabels (through any chain of relabelling views: axes renamed, nothing moved), or itself."""
    while True:
        node = graph[name]
        if node.op != "rearrange" or not isinstance(node.type, TensorType):
            return name
        src = graph[node.inputs[0]].type
        if not isinstance(src, TensorType) or tuple(node.attrs["perm"]) != tuple(range(src.rank)) or \
                src.rank != node.type.rank or \
                not all(ctx.sizes.equal(a.size, b.size) is True for a, b in zip(src.axes, node.type.axes, strict=True)):
            return name
        name = node.inputs[0]


def _append_input(graph: Graph, node: Node, src: str) -> None:
    index = len(node.inputs)
    node.inputs.append(src)
    graph.nx.add_edge(src, node.name, key=index, index=index, type=graph[src].type)
