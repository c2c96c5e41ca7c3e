"""Dead-code elimination: remove nodes whose values nothing uses.

Sound because a removed node has no users and is not returned, so no value the graph returns depends on
it. Kept even when unused: graph inputs (a block's signature), parameters and buffers (the state dict is
the same at every optimisation level), block calls, repeats and scans (they own their blocks' parameters),
and batchnorm (it updates running statistics while training).
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.ir import Graph
from nnspec.compiler.passes.base import Context

KEEP = frozenset({"input", "param", "buffer", "call", "repeat", "scan", "batchnorm"})


@dataclass(frozen=True)
class DeadCodeElimination:
    name: str = "dce"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        removed: list[str] = []
        for node in reversed(list(graph)):
            if node.op in KEEP or node.name in graph.outputs or graph.users(node.name):
                continue
            graph.erase(node.name)
            removed.append(node.name)
        if removed:
            ctx.explain.rewrite(self.name, graph, None, f"removed {len(removed)} unused node"
                                f"{'s' if len(removed) != 1 else ''}: {', '.join(reversed(removed))}")
        return graph, bool(removed)
