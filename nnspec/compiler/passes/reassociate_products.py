"""Products of broadcast factors multiplied smallest first: `(x * y) * z` becomes `(x * z) * y` (or `(y * z) * x`)
when the regrouped inner product spans strictly fewer axes than `x * y` does.

Named axes broadcast, so `dt[B, T, I] * bb[B, T, N] * u[B, T, I]`, read left to right, writes the [B, T, I, N]
product twice (once for `dt * bb`, once for `* u`); `(dt * u) * bb` writes [B, T, I] once and [B, T, I, N]
once (Mamba's input to its scan: one pass over its largest tensor saved). The rewrite needs `x * y` to be read
only by this product (otherwise it is computed anyway), all four tensors of one floating dtype (no promotion to
reorder), and the regrouped result to have exactly the original's type (same axes in the same order), so that
nothing downstream changes. Products already in a fusion group are left alone.

Sound because real multiplication is associative and commutative: the regrouped product is the same value up to
rounding (each form rounds two products, so the results differ by at most a few units in the last place), which
is why only -O2 runs this pass. Every other node is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.graph_edits import erase_unused
from nnspec.compiler.ir import Graph, Node, TensorType
from nnspec.compiler.passes.base import Context, sole_user
from nnspec.compiler.passes.groups import group_of
from nnspec.errors import SpecError


def _axes(graph: Graph, name: str) -> frozenset[str] | None:
    t = graph[name].type
    return frozenset(t.names) if isinstance(t, TensorType) else None


@dataclass(frozen=True)
class ReassociateProducts:
    name: str = "reassociate-products"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for outer in list(graph):
            if outer.name in graph.nodes and outer.op == "mul" and len(outer.inputs) == 2:
                changed |= self._regroup(ctx, graph, outer)
        return graph, changed

    def _regroup(self, ctx: Context, graph: Graph, outer: Node) -> bool:
        for side in (0, 1):
            inner, z = graph[outer.inputs[side]], outer.inputs[1 - side]
            if inner.op != "mul" or len(inner.inputs) != 2 or sole_user(graph, inner.name) is not outer \
                    or group_of(graph, inner.name) or group_of(graph, outer.name):   # groups are formed later
                continue
            names = [*inner.inputs, z]
            types = [graph[n].type for n in names]
            if not all(isinstance(t, TensorType) for t in [*types, inner.type, outer.type]):
                continue
            dtypes = {t.dtype for t in types} | {inner.type.dtype, outer.type.dtype}
            if len(dtypes) != 1 or not next(iter(dtypes)).is_float:
                continue
            product = _axes(graph, inner.name)
            for keep in (1, 0):   # x * z first (keep y), or y * z first (keep x)
                first = inner.inputs[1 - keep]
                if not (_axes(graph, first) | _axes(graph, z)) < product:
                    continue
                if self._rewrite(ctx, graph, outer, inner, first, z, inner.inputs[keep]):
                    return True
        return False

    def _rewrite(self, ctx: Context, graph: Graph, outer: Node, inner: Node, a: str, b: str, rest: str) -> bool:
        """outer = (inner's a * z = b) * rest, in whichever operand orders give outer's type; False when none does."""
        target = outer.type
        for pair in ((a, b), (b, a)):
            try:
                small = ctx.infer("mul", [graph[n].type for n in pair], {})
                for order in ((0, 1), (1, 0)):
                    parts = [small, graph[rest].type]
                    if ctx.infer("mul", [parts[i] for i in order], {}) != target:
                        continue
                    small_node = graph.insert_before(outer.name, "mul", list(pair), {}, small, outer.span,
                                                     f"{outer.name}_small")
                    ins = [small_node.name, rest]
                    regrouped = graph.insert_before(outer.name, "mul", [ins[i] for i in order], {}, target,
                                                    outer.span, f"{outer.name}_regrouped").name
                    old, before = outer.name, f"({inner.inputs[0]} * {inner.inputs[1]}) * {b}"
                    graph.replace_uses(old, regrouped)
                    erase_unused(graph, among={old, inner.name})
                    graph.relabel(regrouped, old)
                    ctx.explain.rewrite(self.name, graph, graph[old], f"{old} = {before} computed as ({pair[0]} * "
                                        f"{pair[1]}) * {rest}: the inner product spans fewer axes")
                    return True
            except SpecError:
                continue
        return False
