"""Common-subexpression elimination: one node for each distinct (op, inputs, attributes).

Sound because every op the op table calls pure (`not node.is_impure()`) is a function of its inputs and
attributes, so two nodes that agree on all three compute the same value; the later one's uses read the
earlier one, which is defined before it. Never merged: impure nodes, that is sources with an identity
(inputs, parameters, buffers), random draws (each dropout draws its own mask), stateful ops (batchnorm's
running statistics), block calls, repeats and scans (each owns its parameters); and members of fusion groups.
Float attributes are compared by their exact text, so 0.0 and -0.0, or two NaNs, are told apart correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nnspec.compiler.ir import Graph
from nnspec.compiler.passes.base import Context


def freeze(value: Any) -> Any:
    """A hashable key that tells apart values `==` confuses (0.0 and -0.0, 1 and 1.0 and True)."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, (bool, int, str)):
        return (type(value).__name__, value)
    if isinstance(value, (tuple, list)):
        return ("seq", tuple(freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, freeze(v)) for k, v in value.items())))
    return ("obj", type(value).__name__, value)   # Axis, TensorType, DType: frozen and hashable


@dataclass(frozen=True)
class CommonSubexpressions:
    name: str = "cse"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        seen: dict[Any, str] = {}
        merged: list[str] = []
        for node in list(graph):
            if node.is_impure() or "fusion_group" in node.meta:
                continue
            key = (node.op, tuple(node.inputs), freeze(node.attrs), node.type)
            first = seen.setdefault(key, node.name)
            if first == node.name:
                continue
            graph.replace_uses(node.name, first)
            graph.erase(node.name)
            merged.append(f"{node.name} -> {first}")
        if merged:
            ctx.explain.rewrite(self.name, graph, None, f"merged {len(merged)} duplicate node"
                                f"{'s' if len(merged) != 1 else ''}: {', '.join(merged)}")
        return graph, bool(merged)
