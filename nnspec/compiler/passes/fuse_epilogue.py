"""Bias + activation epilogue groups: a `linear` and the chain of elementwise ops applied to its result
alone (activation, dropout, cast, scaling by a constant) marked as one `epilogue` group.

The matmul's kernel applies the bias and the chain to each output tile before writing it, so the
pre-activation result is never written and read back. The chain stops at an op with another tensor operand
or a result used by more than one op (that value must be written anyway). Sound because a group is only
an annotation: the nodes and what they compute are unchanged (see `groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.ir import Graph, Node
from nnspec.compiler.passes.base import Context, Refusal, sole_user, users_text
from nnspec.compiler.passes.groups import ACTIVATIONS, POINTWISE, form, group_of, same_domain

UNARY = frozenset({*ACTIVATIONS, "dropout", "cast", "neg", "clamp", "abs"})
SCALAR_BINARY = frozenset({"add", "sub", "mul", "div"})


def epilogue_op(graph: Graph, node: Node, prev: str) -> bool:
    if node.op in UNARY:
        return True
    if node.op in SCALAR_BINARY and node.inputs[0] == prev:
        return graph[node.inputs[1]].op == "const"
    return False


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
                if u is None or group_of(graph, u.name) or u.op not in POINTWISE \
                        or not epilogue_op(graph, u, chain[-1]) or not same_domain(u.type, lin.type):  # type: ignore[arg-type]
                    break
                chain.append(u.name)
            if len(chain) == 1:
                acts = [u for u in graph.users(lin.name) if u.op in ACTIVATIONS]
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
