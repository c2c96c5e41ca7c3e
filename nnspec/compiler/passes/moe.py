"""MoE recognition: the dense gated form of a top-k mixture of SwiGLU experts becomes one `moe` node.

Matched, walking from a `scatter` of routing weights into zeros over an experts axis E:

    logits = linear(x, E, bias=false)          # or einsum(x, router) with router [E, H]: sums only x's axis H
    top, idx = topk(logits, k, over=E)         # softmax after top-k: w = softmax(top, over=K)       (renormalised)
    top, idx = topk(softmax(logits, over=E), k, over=E)
                                               # softmax before: w = top                          (not renormalised)
                                               #                 w = top / sum(top, over=K)       (renormalised)
    gates = scatter(zeros(..., E), idx, w, over=E)
    g = einsum(x, gate_proj)                   # gate_proj [E, I, H]; sums H only (so does u)
    u = einsum(x, up_proj)                     # up_proj [E, I, H]
    y = einsum(gates, silu(g), u, down_proj)   # down_proj [E, H, I]; sums E and I, result has x's axes

The last product may be spelled `gates * (silu(g) * u) * down_proj`, or in two steps, `o = (silu(g) * u) *
down_proj` summing I, then `y = gates * o` summing E, or `y = sum(gates * o, over=E)`.

Result: `moe(x, router, gate_proj, up_proj, down_proj, axis=H, k, norm_topk_prob)` on the same parameter nodes
(the state dict does not change), with a rearrange when the dense result's axis order differs from x's.

Sound because the moe op computes exactly this sum: its routing is softmax over E, the k largest kept, divided by
their sum when renormalising, and the gated sum's terms for unchosen experts are exactly zero (the scatter writes
zeros there), so leaving them out changes nothing. softmax of the k top logits equals the top k of the softmax
divided by their sum (the softmax's normaliser cancels; top-k picks the same experts from logits or probabilities,
softmax being increasing). Only rounding changes: the moe op sums k terms, not E, and routes in float32.

Refused with a reason (never rewritten): experts that are not SwiGLU (`silu(x·w1)·w2`, a plain MLP), a scatter
into something other than zeros or with reduce='add', a router with a bias, weights stored in other axis orders
than the moe op's ([E, I, H] and [E, H, I]), the expert activations used elsewhere (the dense products would stay),
different tensors feeding the router and the experts, a product that sums other axes or keeps E.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.compiler.graph_edits import erase_unused
from nnspec.compiler.ir import Graph, Node, TensorType
from nnspec.compiler.passes.base import Context, Refusal, sole_user, tensor_type, users_text
from nnspec.errors import SpecError


@dataclass
class Match:
    scatter: Node
    x: str = ""
    axis: str = ""          # x's axis the experts read (H)
    experts: str = ""       # the experts axis (E)
    k: int = 0
    norm: bool = False
    router: str = ""
    gate: str = ""
    up: str = ""
    down: str = ""
    result: Node | None = None               # the node whose value the moe op replaces
    matched: list[str] = field(default_factory=list)   # nodes the dense form used: erased when nothing else reads them
    routing: str = ""                        # how the routing weights were spelled, for the explanation


@dataclass(frozen=True)
class RecognizeMoE:
    name: str = "moe"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for sc in list(graph):
            if sc.op != "scatter" or sc.name not in graph.nodes:
                continue
            try:
                m = self._match(ctx, graph, sc)
                self._rewrite(ctx, graph, m)
                changed = True
            except Refusal as why:
                if _is_topk_scatter(graph, sc):
                    ctx.explain.refuse(self.name, graph, sc, f"scatter {sc.name} of routing weights not made a moe "
                                                             f"op: {why}")
        return graph, changed

    # ---- matching ----
    def _match(self, ctx: Context, graph: Graph, sc: Node) -> Match:
        m = Match(sc, experts=sc.attrs["axis"], matched=[sc.name])
        base, idx, w = (graph[i] for i in sc.inputs)
        if sc.attrs["reduce"] != "set":
            raise Refusal(f"it accumulates (reduce={sc.attrs['reduce']!r}), so repeated experts would add up")
        if base.op != "full" or base.attrs["value"] != 0:
            raise Refusal(f"it writes into {base.name}, not zeros: the unchosen experts' weights would not be 0")
        m.matched.append(base.name)
        topk = self._topk_of(graph, idx, 1)
        if topk.attrs["axis"] != m.experts:
            raise Refusal(f"top-k {topk.name} is over {topk.attrs['axis']}, the scatter over {m.experts}")
        m.k = topk.attrs["k"]
        m.matched += [idx.name, topk.name]
        logits = self._routing(graph, m, topk, w)
        self._router(ctx, graph, m, logits)
        self._experts(ctx, graph, m)
        return m

    def _topk_of(self, graph: Graph, node: Node, index: int) -> Node:
        if node.op != "getitem" or node.attrs["index"] != index or graph[node.inputs[0]].op != "topk":
            raise Refusal(f"{node.name} is not the {('values', 'indices')[index]} of a top-k")
        return graph[node.inputs[0]]

    def _routing(self, graph: Graph, m: Match, topk: Node, w: Node) -> Node:
        """How the scattered weights come from the top-k; returns the router logits node."""
        before = graph[topk.inputs[0]]
        k_axis = topk.attrs["into"].name
        if w.op == "softmax":                                 # softmax of the top-k logits: renormalised
            if w.attrs["axis"] != k_axis:
                raise Refusal(f"softmax {w.name} is over {w.attrs['axis']}, not the top-k axis {k_axis}")
            self._topk_of(graph, graph[w.inputs[0]], 0)
            if graph[w.inputs[0]].inputs[0] != topk.name:
                raise Refusal("the softmax reads another top-k's values")
            m.norm, m.routing = True, "softmax after top-k"
            m.matched += [w.name, w.inputs[0]]
            return before
        if before.op != "softmax" or before.attrs["axis"] != m.experts:
            raise Refusal(f"the routing weights {w.name} are neither a softmax of the top-k values nor top-k values "
                          f"of a softmax over {m.experts}")
        m.matched.append(before.name)
        if w.op == "getitem":
            if self._topk_of(graph, w, 0) is not topk:
                raise Refusal("the weights are another top-k's values")
            m.norm, m.routing = False, "softmax before top-k, not renormalised"
            m.matched.append(w.name)
        elif w.op == "div":
            top, total = (graph[i] for i in w.inputs)
            if self._topk_of(graph, top, 0) is not topk or total.op != "sum" or total.inputs[0] != top.name \
                    or total.attrs["axis"] != k_axis:
                raise Refusal(f"{w.name} is not the top-k values divided by their sum over {k_axis}")
            m.norm, m.routing = True, "softmax before top-k, renormalised"
            m.matched += [w.name, top.name, total.name]
        else:
            raise Refusal(f"the routing weights come from {w.op} {w.name}, not the top-k values (or them over "
                          f"their sum)")
        return graph[before.inputs[0]]

    def _router(self, ctx: Context, graph: Graph, m: Match, logits: Node) -> None:
        if logits.op == "linear":
            if len(logits.inputs) != 2:
                raise Refusal(f"the router {logits.name} has a bias (the moe op's router has none)")
            m.x, m.router, m.axis = logits.inputs[0], logits.inputs[1], logits.attrs["axis"]
        elif logits.op == "einsum" and len(logits.inputs) == 2:
            x, r = logits.inputs
            if graph[x].op == "param":
                x, r = r, x
            m.x, m.router = x, r
            summed = set(tensor_type(graph, x).names) - set(logits.attrs["out"])
            if len(summed) != 1:
                raise Refusal(f"the router product {logits.name} sums {', '.join(sorted(summed)) or 'nothing'}, "
                              f"not one axis of the input")
            m.axis = summed.pop()
        else:
            raise Refusal(f"the router logits come from {logits.op} {logits.name}, not a product of the input")
        router = graph[m.router]
        if router.op != "param" or tensor_type(graph, m.router).names != (m.experts, m.axis):
            raise Refusal(f"the router weight {m.router} is not a parameter [{m.experts}, {m.axis}]")
        m.matched.append(logits.name)

    def _experts(self, ctx: Context, graph: Graph, m: Match) -> None:
        """The gated sum reading the scatter: the final product and its factors silu(g), u and down_proj."""
        user = sole_user(graph, m.scatter.name)
        if user is None:
            raise Refusal(f"the gates are used by {users_text(graph.users(m.scatter.name))}")
        if user.op == "mul":                       # sum(gates * o, over=E)
            total = sole_user(graph, user.name)
            if total is None or total.op != "sum" or total.attrs["axis"] != m.experts:
                raise Refusal(f"the gated product {user.name} is not summed over {m.experts}")
            other = [i for i in user.inputs if i != m.scatter.name]
            factors, result, steps = other, total, [user.name]
        elif user.op == "einsum":
            factors = [i for i in user.inputs if i != m.scatter.name]
            result, steps = user, []
        else:
            raise Refusal(f"the gates feed {user.op} {user.name}, not a product summed over {m.experts}")
        x_t = tensor_type(graph, m.x)
        if sorted(tensor_type(graph, result.name).names) != sorted(x_t.names):
            raise Refusal(f"the gated sum {result.name} has axes {tensor_type(graph, result.name).names}, "
                          f"not the input's {x_t.names}")
        factors = self._flatten(graph, factors, steps, m.x)
        down = [f for f in factors if graph[f].op == "param"]
        acts = [f for f in factors if graph[f].op != "param"]
        if len(down) != 1 or len(acts) != 2:
            raise Refusal(f"the experts' product reads {', '.join(factors)}: not silu(gate)·up and one down "
                          f"projection (SwiGLU experts)")
        m.down = down[0]
        silus = [a for a in acts if graph[a].op == "silu"]
        if len(silus) != 1:
            raise Refusal("the experts are not SwiGLU: no single silu(x·gate_proj) factor beside x·up_proj")
        act, up = silus[0], next(a for a in acts if a != silus[0])
        gate = graph[act].inputs[0]
        for what, node in (("silu", act), ("gate product", gate), ("up product", up)):
            if sole_user(graph, node) is None:
                raise Refusal(f"the experts' {what} {node} is used by {users_text(graph.users(node))}, so the "
                              f"dense products would stay")
        m.gate, m.up = self._projection(graph, m, gate), self._projection(graph, m, up)
        hidden = graph[m.gate].type.axes[1]  # type: ignore[union-attr]
        want = (m.experts, m.axis, hidden.name)
        if tensor_type(graph, m.down).names != want:
            raise Refusal(f"the down projection {m.down} is {tensor_type(graph, m.down)}, the moe op needs "
                          f"[{', '.join(want)}]")
        if tensor_type(graph, m.up).names != tensor_type(graph, m.gate).names:
            raise Refusal(f"the up projection {m.up} and gate projection {m.gate} have different axes")
        m.result = result
        m.matched += [result.name, *steps, act, gate, up]

    def _flatten(self, graph: Graph, names: list[str], steps: list[str], m_x: str) -> list[str]:
        """The factors of a product: a mul, or an einsum not reading the input (the expert products do), read
        only here is opened up into its own operands (what it sums is checked before rewriting)."""
        out: list[str] = []
        for name in names:
            node = graph[name]
            opens = node.op == "mul" or (node.op == "einsum" and m_x not in node.inputs)
            if opens and sole_user(graph, name) is not None:
                steps.append(name)
                out += self._flatten(graph, list(node.inputs), steps, m_x)
            else:
                out.append(name)
        return out

    def _projection(self, graph: Graph, m: Match, name: str) -> str:
        """The parameter [E, I, H] of `name` = einsum(x, it) summing only H."""
        node = graph[name]
        if node.op != "einsum" or len(node.inputs) != 2 or m.x not in node.inputs:
            raise Refusal(f"the expert product {name} is not a product of the router's input {m.x} with weights")
        w = next(i for i in node.inputs if i != m.x)
        w_t = tensor_type(graph, w)
        if graph[w].op != "param" or w_t.rank != 3 or w_t.names[0] != m.experts or w_t.names[2] != m.axis:
            raise Refusal(f"the expert weight {w} is not a parameter [{m.experts}, I, {m.axis}] ({w_t})")
        summed = (set(tensor_type(graph, m.x).names) | set(w_t.names)) - set(node.attrs["out"])
        if summed != {m.axis}:
            raise Refusal(f"the expert product {name} sums {', '.join(sorted(summed)) or 'nothing'}, not {m.axis}")
        return w

    # ---- rewriting ----
    def _rewrite(self, ctx: Context, graph: Graph, m: Match) -> None:
        assert m.result is not None
        self._check_sums(graph, m)
        attrs = {"axis": m.axis, "k": m.k, "norm_topk_prob": m.norm}
        ins = [m.x, m.router, m.gate, m.up, m.down]
        try:   # type-check first, so a refusal leaves the graph as it was
            t = ctx.infer("moe", [graph[i].type for i in ins], attrs)
        except SpecError as err:
            raise Refusal(f"the moe op does not accept this form: {err.message}") from None
        anchor, target = m.result.name, tensor_type(graph, m.result.name)
        out = graph.insert_before(anchor, "moe", ins, attrs, t, m.result.span, f"{anchor}_moe").name
        if t != target:
            assert isinstance(t, TensorType)
            out = graph.insert_before(anchor, "rearrange", [out], {"perm": tuple(t.index(n) for n in target.names),
                                                                   "axes": target.axes}, target, m.result.span,
                                      f"{anchor}_t").name
        graph.replace_uses(anchor, out)
        erase_unused(graph, among=set(m.matched))
        graph.relabel(out, anchor)
        ctx.explain.rewrite(self.name, graph, m.scatter, f"{anchor} -> moe({m.x}, {m.router}, {m.gate}, {m.up}, "
                            f"{m.down}; over {m.axis}, {m.k} of {m.experts}, norm_topk_prob={m.norm}): top-k router "
                            f"({m.routing}) and a gated sum of SwiGLU experts; runs only the chosen experts")

    def _check_sums(self, graph: Graph, m: Match) -> None:
        """What the products sum, all told, must be E and I (and H inside the projections): nothing else."""
        hidden = tensor_type(graph, m.gate).names[1]
        for name in m.matched:
            node = graph[name]
            if node.op == "einsum" and name != m.router:
                ins = set().union(*(tensor_type(graph, i).names for i in node.inputs))
                summed = ins - set(node.attrs["out"])
                if not summed <= {m.experts, hidden, m.axis}:
                    raise Refusal(f"the product {name} also sums {', '.join(sorted(summed - {m.experts, hidden}))}")
        if m.result.op == "einsum" and m.experts in m.result.attrs["out"]:  # type: ignore[union-attr]
            raise Refusal(f"the gated product {m.result.name} keeps {m.experts}")   # type: ignore[union-attr]


def _is_topk_scatter(graph: Graph, sc: Node) -> bool:
    """A scatter worth explaining a refusal for: its indices are a top-k's."""
    idx = graph[sc.inputs[1]]
    return idx.op == "getitem" and graph[idx.inputs[0]].op == "topk"
