"""Linear fusion: linears that read the same input over the same axis (q/k/v projections, gate/up) become
one linear over their weights concatenated along the output axis, followed by one slice per original.

    q = linear(x, Wq, bq); k = linear(x, Wk, bk)
 -> qk = linear(x, concat(Wq, Wk), concat(bq, bk)); q = slice(qk, 0:n_q); k = slice(qk, n_q:n_q+n_k)

Sound because row i of `x W^T + b` depends only on row i of W and entry i of b, so each slice of the fused
result is exactly the original linear's result (up to the summation order a matrix library picks). The
parameters are untouched: the `param` nodes stay as they are (the state dict is the same), and the
`concat` of weights, marked `meta["weights_only"]`, depends on parameters alone, so a backend computes it
once when weights are loaded (or traced) rather than on every call. Weights whose axes are named
differently are relabelled first (a view). Refused, with the reason: weights or biases that are not
parameters, a bias on some linears only, different dtypes, an output size that depends on a free dim, and
weights defined after a block call that has parameters or buffers of its own (moving them up would reorder the
state dict; a block without any is passed over).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nnspec.compiler.analysis import runs_block
from nnspec.compiler.ir import Axis, Graph, Model, Node, repeat_counts
from nnspec.compiler.ops import OPS
from nnspec.compiler.passes.base import Context, Refusal, tensor_type
from nnspec.spec.source import Span


@dataclass(frozen=True)
class FuseLinear:
    name: str = "fuse-linear"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for x in list(graph):
            if x.name not in graph.nodes:
                continue
            linears = [u for u in graph.users(x.name) if u.op == "linear" and u.inputs[0] == x.name
                       and "fusion_group" not in u.meta]
            if len(linears) < 2:
                continue
            for group in self._groups(ctx, graph, x, linears):
                try:
                    self._fuse(ctx, graph, x, group)
                    changed = True
                except Refusal as why:
                    ctx.explain.refuse(self.name, graph, group[0], f"linears {', '.join(u.name for u in group)} "
                                       f"of {x.name} not fused: {why}")
        return graph, changed

    def _groups(self, ctx: Context, graph: Graph, x: Node, linears: list[Node]) -> list[list[Node]]:
        """Linears that can share one matmul: same axis, all with or all without a bias."""
        buckets: dict[tuple[str, bool], list[Node]] = {}
        for u in linears:
            buckets.setdefault((u.attrs["axis"], len(u.inputs) == 3), []).append(u)
        for (axis, bias), group in buckets.items():
            other = buckets.get((axis, not bias))
            if len(group) == 1 and other and bias:
                ctx.explain.refuse(self.name, graph, group[0], f"linear {group[0].name} of {x.name} not fused with "
                                   f"{', '.join(u.name for u in other)}: it has a bias and they do not")
        return [g for g in buckets.values() if len(g) >= 2]

    def _fuse(self, ctx: Context, graph: Graph, x: Node, group: list[Node]) -> None:
        sizes = ctx.sizes
        weights = [graph[u.inputs[1]] for u in group]
        biases = [graph[u.inputs[2]] for u in group] if len(group[0].inputs) == 3 else []
        for u, w in zip(group, weights, strict=True):
            if w.op != "param":
                raise Refusal(f"the weight of {u.name} is computed ({w.op}), not a parameter")
        for u, b in zip(group, biases, strict=False):
            if b.op != "param":
                raise Refusal(f"the bias of {u.name} is computed ({b.op}), not a parameter")
        w_types = [tensor_type(graph, w.name) for w in weights]
        if len({tensor_type(graph, n.name).dtype for n in [*weights, *biases, *group]}) != 1:
            raise Refusal("their dtypes differ")
        outs = [sizes.value(t.axes[0].size) for t in w_types]
        if any(n is None for n in outs):
            raise Refusal("an output size depends on a free dim")
        self._hoist_state(ctx.model, graph, group[0], weights + biases)

        anchor = group[0].name
        span = group[0].span
        base = "_".join(u.name for u in group)
        x_t = tensor_type(graph, x.name)
        fused_name = "+".join(u.name for u in group)
        while fused_name in x_t.names or fused_name in w_types[0].names:
            fused_name += "'"
        out_name, in_name = w_types[0].names
        if any(t.names != w_types[0].names for t in w_types):   # relabel every weight alike: [part, in]
            out_name = f"{fused_name}.part"
        fused_axis = Axis(fused_name, sum(outs))  # type: ignore[arg-type]

        def relabel(node: Node, names: tuple[str, ...]) -> str:
            t = tensor_type(graph, node.name)
            if t.names == names:
                return node.name
            axes = tuple(Axis(n, a.size) for n, a in zip(names, t.axes, strict=True))
            return self._add(ctx, graph, anchor, "rearrange", [node.name],
                             {"perm": tuple(range(t.rank)), "axes": axes}, span, f"{node.name}_view")

        w_parts = [relabel(w, (out_name, in_name)) for w in weights]
        w_cat = self._add(ctx, graph, anchor, "concat", w_parts, {"axis": out_name, "into": fused_axis}, span,
                          f"{base}_weight")
        graph[w_cat].meta["weights_only"] = True
        ins = [x.name, w_cat]
        if biases:
            b_parts = [relabel(b, (out_name,)) for b in biases]
            b_cat = self._add(ctx, graph, anchor, "concat", b_parts, {"axis": out_name, "into": fused_axis}, span,
                              f"{base}_bias")
            graph[b_cat].meta["weights_only"] = True
            ins.append(b_cat)
        fused = self._add(ctx, graph, anchor, "linear", ins, {"axis": group[0].attrs["axis"]}, span, base)
        start = 0
        pos = x_t.index(group[0].attrs["axis"])
        parts = []
        for u, n in zip(group, outs, strict=True):
            into = tensor_type(graph, u.name).axes[pos]
            part = self._add(ctx, graph, anchor, "slice", [fused], {"axis": fused_name, "start": start,
                             "stop": start + n, "step": 1, "into": into}, u.span, f"{u.name}_part")  # type: ignore[operator]
            if graph[part].type != u.type:
                raise AssertionError(f"slice {part} has type {graph[part].type}, {u.name} had {u.type}")
            parts.append(part)
            start += n  # type: ignore[operator]
        for u, part in zip(group, parts, strict=True):
            graph.replace_uses(u.name, part)
            graph.erase(u.name)
            graph.relabel(part, u.name)   # the slice is what the linear was: keep its name
        ctx.explain.rewrite(self.name, graph, group[0], f"{', '.join(u.name for u in group)} (linears of {x.name}) "
                            f"-> one linear {fused} over concat({', '.join(w.attrs['path'] for w in weights)}) "
                            f"with {sum(outs)} outputs, then {len(group)} slices; parameters unchanged")  # type: ignore[arg-type]

    def _add(self, ctx: Context, graph: Graph, anchor: str, op: str, ins: list[str], attrs: dict[str, Any],
             span: Span | None, hint: str) -> str:
        t = ctx.infer(op, [graph[i].type for i in ins], attrs)
        return graph.insert_before(anchor, op, ins, attrs, t, span, hint).name

    def _hoist_state(self, model: Model, graph: Graph, first: Node, needed: list[Node]) -> None:
        """Move parameters and buffers defined after `first` up to just before it, keeping the order of every
        parameter and buffer (the state dict's order) unchanged; a block call in between that defines state of
        its own refuses (its state would come after the moved state), one without state is passed over."""
        order = list(graph.nodes)
        lo = order.index(first.name)
        hi = max(order.index(n.name) for n in needed)
        if hi < lo:
            return
        between = order[lo:hi + 1]
        owners = [n for n in between if runs_block(graph[n]) and _holds_state(model, graph[n])]
        if owners:
            raise Refusal(f"their weights are defined after {owners[0]}, a block with parameters or buffers; "
                          "moving them up would reorder the state dict")
        graph.move_before([n for n in between if OPS[graph[n].op].has("state")], first.name)


def _holds_state(model: Model, node: Node) -> bool:
    """Whether a call, repeat or scan defines parameters or buffers, in its blocks or in blocks they run."""
    blocks = repeat_counts(node.attrs, weights=True) if node.op == "repeat" else [node.attrs["block"]]
    return any(OPS[n.op].has("state") or (runs_block(n) and _holds_state(model, n))
               for block in blocks for n in model.templates[block])
