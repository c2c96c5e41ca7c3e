"""Bias + activation epilogue groups: a `linear` and the chain of elementwise ops applied to its result
alone (ops with the `epilogue` trait: activation, dropout, cast, scaling by a constant) marked as one
`epilogue` group.

The matmul's kernel applies the bias and the chain to each output tile before writing it, so the
pre-activation result is never written and read back. The chain stops at an op with another tensor operand
or a result used by more than one op (that value must be written anyway). Sound because a group is only
an annotation: the nodes and what they compute are unchanged (see `groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.ir import Graph, Node
from nnspec.compiler.ops import OPS
from nnspec.compiler.passes.base import Context, Refusal, const_value, sole_user, users_text
from nnspec.compiler.passes.groups import form, group_of, same_domain


def epilogue_op(graph: Graph, node: Node, prev: str) -> bool:
    """`node`, applied to the chain's value `prev`, is cheap enough to ride on the matmul's output tiles: an
    `epilogue` op, a binary one only with `prev` on the left and a scalar constant on the right."""
    if not OPS[node.op].has("epilogue"):
        return False
    if len(node.inputs) == 1:
        return True
    return node.inputs[0] == prev and const_value(graph, node.inputs[1]) is not None


@dataclass(frozen=True)
class FuseEpilogue:
    name: str = "fuse-epilogue"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for lin in list(graph):
            if lin.op != "linear" or group_of(graph, lin.name):
                continue
            chain = [lin.name]
            while True:
                u = sole_user(graph, chain[-1])
                if u is None or group_of(graph, u.name) or not OPS[u.op].has("pointwise") \
                        or not epilogue_op(graph, u, chain[-1]) or not same_domain(u.type, lin.type):  # type: ignore[arg-type]
                    break
                chain.append(u.name)
            if len(chain) == 1:
                acts = [u for u in graph.users(lin.name) if OPS[u.op].has("activation")]
                if acts and len(graph.users(lin.name)) > 1:
                    ctx.explain.refuse(self.name, graph, lin, f"{lin.name} -> {acts[0].name} not grouped: "
                                       f"{lin.name} is also used by "
                                       f"{users_text([u for u in graph.users(lin.name) if u is not acts[0]])}")
                continue
            try:
                form(ctx, graph, self.name, "epilogue", chain, f"linear {lin.name} with "
                     f"{' -> '.join(graph[n].op for n in chain[1:])} applied to its output tiles")
                changed = True
            except Refusal as why:
                ctx.explain.refuse(self.name, graph, lin, f"{' -> '.join(chain)} not grouped: {why}")
        return graph, changed
