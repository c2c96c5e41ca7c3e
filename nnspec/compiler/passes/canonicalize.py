"""Canonicalisation: local rewrites to one spelling, each exact (the same bits as before).

- identities removed: `dropout(x, 0)`, `cast` to the dtype x has, a `rearrange` that keeps x's axes, `x * 1`,
  `1 * x`, `x / 1`, `x - 0`, `-(-x)` and `not not x`, when the result has exactly x's type (broadcasting
  against a scalar adds no axis; with a tensor operand it could, so only scalar `const`s count);
- two `rearrange`s composed into one when the first only permutes (the permutations compose) or the second
  only reshapes (a view of a view is a view of the source);
- a scalar constant operand of a commutative op (`+ * max min == != and or`) moved to the right, so later
  passes look for it in one place (IEEE addition, multiplication and the rest are commutative);
- `where(not m, a, b)` becomes `where(m, b, a)` when that keeps the result's axis order.

Nodes made unused by a rewrite are removed here; other dead code is left for `dce`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.compiler.ir import Graph, Node
from nnspec.compiler.ops import OPS
from nnspec.compiler.passes.base import Context, const_value, tensor_type


def _is(value: object, target: int) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == target


def identity_of(graph: Graph, node: Node) -> str | None:
    """The input whose value this node merely repeats, or None."""
    ins, op = node.inputs, node.op
    src: str | None = None
    if not ins:
        return None
    if op == "dropout":
        src = ins[0] if node.attrs["p"] == 0.0 else None
    elif op == "cast":
        src = ins[0] if tensor_type(graph, ins[0]).dtype == node.attrs["dtype"] else None
    elif op == "rearrange":
        keeps = tuple(node.attrs["perm"]) == tuple(range(len(node.attrs["perm"])))
        src = ins[0] if keeps and tuple(node.attrs["axes"]) == tensor_type(graph, ins[0]).axes else None
    elif op in ("mul", "div", "sub") and _is(const_value(graph, ins[1]), 0 if op == "sub" else 1):
        src = ins[0]
    elif op == "mul" and _is(const_value(graph, ins[0]), 1):
        src = ins[1]
    elif op in ("neg", "logical_not") and graph[ins[0]].op == op:
        src = graph[ins[0]].inputs[0]
    return src if src is not None and graph[src].type == node.type else None


def compose_rearranges(graph: Graph, node: Node) -> dict | None:
    """Attributes of one rearrange of the inner one's source doing what `node` (a rearrange of a rearrange)
    does, or None."""
    if node.op != "rearrange" or graph[node.inputs[0]].op != "rearrange":
        return None
    inner = graph[node.inputs[0]]
    src = tensor_type(graph, inner.inputs[0])
    perm1, perm2 = tuple(inner.attrs["perm"]), tuple(node.attrs["perm"])
    if tuple(inner.attrs["axes"]) == tuple(src.axes[p] for p in perm1):     # the inner one only permutes
        return {"perm": tuple(perm1[p] for p in perm2), "axes": node.attrs["axes"]}
    if perm2 == tuple(range(len(perm2))):                                   # the outer one only reshapes
        return {"perm": perm1, "axes": node.attrs["axes"]}
    return None


@dataclass(frozen=True)
class Canonicalize:
    name: str = "canonicalize"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for _ in range(8):   # rewrites enable each other (a composed rearrange may become an identity)
            step = False
            for node in list(graph):
                if node.name in graph.nodes:
                    step |= self._rewrite(ctx, graph, node)
            changed |= step
            if not step:
                break
        return graph, changed

    def _rewrite(self, ctx: Context, graph: Graph, node: Node) -> bool:
        explain = ctx.explain
        src = identity_of(graph, node)
        if src is not None:
            graph.replace_uses(node.name, src)
            explain.rewrite(self.name, graph, node, f"{node.name} = {node.op}(...) is {src} unchanged; uses read {src}")
            _drop_if_unused(graph, node.name)
            return True
        attrs = compose_rearranges(graph, node)
        if attrs is not None:
            inner = node.inputs[0]
            node.attrs = attrs
            graph.set_input(node.name, 0, graph[inner].inputs[0])
            explain.rewrite(self.name, graph, node, f"{node.name} = rearrange(rearrange {inner}) composed into one")
            _drop_if_unused(graph, inner)
            return True
        if not node.inputs:
            return False
        if OPS[node.op].has("commutative") and len(node.inputs) == 2:
            a, b = node.inputs
            if graph[a].op == "const" and graph[b].op != "const" \
                    and ctx.infer(node.op, [graph[b].type, graph[a].type], node.attrs) == node.type:
                graph.set_input(node.name, 0, b)
                graph.set_input(node.name, 1, a)
                explain.rewrite(self.name, graph, node, f"{node.name}: constant operand {a} moved to the right")
                return True
        if node.op == "where" and graph[node.inputs[0]].op == "logical_not":
            c, a, b = node.inputs
            m = graph[c].inputs[0]
            if ctx.infer("where", [graph[m].type, graph[b].type, graph[a].type], {}) == node.type:
                for i, src in enumerate((m, b, a)):
                    graph.set_input(node.name, i, src)
                explain.rewrite(self.name, graph, node, f"{node.name} = where(not {m}, a, b) -> where({m}, b, a)")
                _drop_if_unused(graph, c)
                return True
        return False


def _drop_if_unused(graph: Graph, name: str) -> None:
    """Erase a node a rewrite left unused, when DCE would (the op table calls it removable)."""
    if name in graph.nodes and not graph.users(name) and name not in graph.outputs and OPS[graph[name].op].removable:
        graph.erase(name)
