"""Graph invariants: `verify` checks what every pass and transform must leave true (tests run it after each)."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.ir import Graph
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.registry import Effect
from nnspec.errors import InternalError, SpecError


def verify(graph: Graph, sizes: Any, templates: dict[str, Graph] | None = None) -> None:
    """Check a graph's invariants; raise InternalError naming the first broken one.

    Every node's type is what its op's rule infers from its inputs' types (and a call's or repeat's result
    is its template's), the networkx edges mirror `node.inputs`, the node order is topological, inputs and
    outputs exist, and fusion groups name existing members that carry the group's name.
    """
    def fail(msg: str) -> InternalError:
        return InternalError(f"graph {graph.name}: {msg}")

    if set(graph.nx.nodes) != set(graph.nodes):
        raise fail(f"edge graph and node table disagree on {sorted(set(graph.nx.nodes) ^ set(graph.nodes))}")
    seen: set[str] = set()
    pending = len(sizes.pending)
    try:
        for node in graph:
            if node.op not in OPS:
                raise fail(f"{node.name} has unknown op {node.op}")
            for i, src in enumerate(node.inputs):
                if src not in seen:
                    raise fail(f"{node.name} reads {src}, which is not defined before it")
                edge = graph.nx.get_edge_data(src, node.name, key=i)
                if edge is None or edge.get("index") != i:
                    raise fail(f"no edge {src} -> {node.name} for input {i}")
                if edge.get("type") != graph.nodes[src].type:
                    raise fail(f"edge {src} -> {node.name} carries {edge.get('type')}, not {graph.nodes[src].type}")
            n_edges = graph.nx.in_degree(node.name)
            if n_edges != len(node.inputs):
                raise fail(f"{node.name} has {len(node.inputs)} inputs but {n_edges} incoming edges")
            try:
                inferred = OPS[node.op].infer(graph.input_types(node), node.attrs, sizes)
            except SpecError as err:
                raise fail(f"{node.name} = {node.op}(...) no longer type-checks: {err.message}") from None
            if inferred != node.type:
                raise fail(f"{node.name} = {node.op}(...) is stored as {node.type} but infers {inferred}")
            if templates is not None and OPS[node.op].effect is Effect.OWNS_STATE:   # runs a block
                for name in [node.attrs["block"], *(b for _, b in node.attrs.get("variants", ()))]:
                    block = templates.get(name)
                    if block is None:
                        raise fail(f"{node.name} calls missing block {name}")
                    if node.op != "scan" and block.output_type() != node.attrs["result"]:
                        raise fail(f"{node.name}: block {block.name} returns {block.output_type()}, "
                                   f"not {node.attrs['result']}")
            seen.add(node.name)
    finally:
        del sizes.pending[pending:]
    if graph.inputs != [n.name for n in graph if n.op == "input"]:
        raise fail(f"inputs {graph.inputs} are not the graph's input nodes in order")
    for out in graph.outputs:
        if out not in graph.nodes:
            raise fail(f"output {out} does not exist")
    for name, group in graph.meta.get("fusion_groups", {}).items():
        for member in group.nodes:
            if member not in graph.nodes or graph.nodes[member].meta.get("fusion_group") != name:
                raise fail(f"fusion group {name} lists {member}, which is not a member")
