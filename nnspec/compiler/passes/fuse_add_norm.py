"""Residual add + norm fusion groups: a row norm of a sum (`layernorm(a + b)`, `rmsnorm(a + b)`: ops with the
`row_norm` trait) marked as one `add_norm` group.

The kernel reads a, b and the norm's parameters once and writes the normalised result (and the sum, when
something else also reads it, as the next residual does in a pre-norm transformer), instead of writing
the sum and reading it back. Sound because a group is only an annotation: the nodes and what they compute
are unchanged (see `groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.ir import Graph
from nnspec.compiler.ops import OPS
from nnspec.compiler.passes.base import Context, Refusal
from nnspec.compiler.passes.groups import form, group_of


@dataclass(frozen=True)
class FuseAddNorm:
    name: str = "fuse-add-norm"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for norm in list(graph):
            if not OPS[norm.op].has("row_norm") or group_of(graph, norm.name) or graph[norm.inputs[0]].op != "add":
                continue
            add = graph[norm.inputs[0]]
            try:
                form(ctx, graph, self.name, "add_norm", [add.name, norm.name],
                     f"residual {add.name} and {norm.op} {norm.name}")
                changed = True
            except Refusal as why:
                ctx.explain.refuse(self.name, graph, norm, f"{add.name} + {norm.name} not grouped: {why}")
        return graph, changed
