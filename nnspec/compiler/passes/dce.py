"""Dead-code elimination: remove nodes whose values nothing uses.

Sound because a removed node has no users and is not returned, so no value the graph returns depends on
it. Only what the op table calls removable goes (pure ops, and random draws: an unused dropout); kept even
when unused are graph inputs (a block's signature), parameters and buffers (the state dict is the same at
every optimisation level), block calls, repeats and scans (they own their blocks' parameters), and stateful
ops such as batchnorm (it updates running statistics while training). The rule is `graph_edits.erase_unused`,
which the transforms use too.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.graph_edits import erase_unused
from nnspec.compiler.ir import Graph
from nnspec.compiler.passes.base import Context


@dataclass(frozen=True)
class DeadCodeElimination:
    name: str = "dce"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        removed = [node.name for node in erase_unused(graph)]
        if removed:
            ctx.explain.rewrite(self.name, graph, None, f"removed {len(removed)} unused node"
                                f"{'s' if len(removed) != 1 else ''}: {', '.join(reversed(removed))}")
        return graph, bool(removed)
