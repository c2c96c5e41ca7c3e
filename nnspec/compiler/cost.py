"""The cost model: closed-form formulas in the free dims for parameters, FLOPs, activation memory,
KV-cache bytes, and the memory traffic of every fusion group and attention, fused and unfused.

Everything is a sympy expression in the free dims (batch `B`, sequence `T`, ...) with every declared dim
substituted; bind free dims (`nnspec check --cost --set B=1 --set T=128`) and each is a number. Costs are
taken on the model optimised at `-O2` (spelled-out attention recognised, fusion groups formed), so a
spec's costs do not depend on how it spells attention.

FLOPs (the convention `nnspec check --cost` prints and the benchmarks use):
- a multiply-add is 2 FLOPs (`linear`, contractions, convolutions, attention's two products); other ops
  count what their op declares in docs/ops.md (elementwise 1 per element, transcendental activations 4-8,
  softmax 5, layernorm 8); shape ops, embeddings and sources are free;
- causal attention is counted as half of full attention (products, softmax and all): only the allowed
  query/key pairs are computed (the exact count, q(q+1)/2 of q², differs by one diagonal);
- repeats multiply their block's count, a scan multiplies its step's by its length; nothing is unrolled;
- the output head (the linear or contraction with a parameter that produces a model output: the LM head,
  tied or not, or a classifier) is included in the total and also shown on its own.

Activation memory: the peak, over one inference forward pass in node order, of the bytes of intermediate
tensors alive at once. A tensor is allocated by the op producing it and freed after its last use; views
(rearrange, select, slice, getitem) allocate nothing and keep their source alive; parameters, buffers and
scalar constants are not activations, the model's inputs are. A block call holds its caller's live
tensors plus the block's own peak; a repeat counts one iteration (iterations run one after another). When
free dims are unbound the peak is the `Max` of the candidates no other candidate dominates.

KV cache: for every causal attention, the keys and values it reads, in their dtype, per token (divided by
the key axis and the batch axes, those sized by free dims other than the key's), per layer (one
execution of the attention) and in total for the bound or symbolic batch and sequence.

Memory traffic (Abbott & Zardini 2024, "FlashAttention on a Napkin"): an unfused op reads each input and
writes its output once; a fusion group reads its inputs once and writes its outputs once, so fusing saves
two transfers of every intermediate kept on chip. Attention per (batch, head) with q queries, x keys, head
dims d (keys) and e (values): unfused q·d + x·d + x·e + q·e + 4·q·x elements (scores written, read,
probabilities written, read); fused (keys and values streamed with the online-softmax accumulator, a
query tile of g rows with g·(d + e) = M on-chip elements) q·d + q·e + (x·d + x·e)·max(1, q·(d + e)/M), the
napkin's 2qd + 4qxd²/M for d = e. M defaults to 2^16 elements (`ON_CHIP`); a mask or bias adds its size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from nnspec.compiler.analysis import DTYPE_BYTES, Analysis, runs_block
from nnspec.compiler.decode import cached_values
from nnspec.compiler.ir import FusionGroup, Graph, Model, Node, Type, repeat_counts
from nnspec.compiler.ops import OPS
from nnspec.compiler.sizes import MAX_EXPANDED_TERMS, expand, expanded_terms

ON_CHIP = 2 ** 16
ZERO = sympy.Integer(0)


@dataclass
class GroupIO:
    block: str
    name: str
    kind: str
    nodes: list[str]
    count: sympy.Expr        # executions per forward pass
    unfused: sympy.Expr      # bytes per execution
    fused: sympy.Expr


@dataclass
class AttentionIO:
    block: str
    node: str
    causal: bool
    count: sympy.Expr
    unfused: sympy.Expr      # bytes per execution
    fused: sympy.Expr
    flops: sympy.Expr        # per execution, causal halved


@dataclass
class Cost:
    params: int
    flops: sympy.Expr                    # per forward pass, head included
    head_flops: sympy.Expr
    head: list[str]                      # how each output head is computed
    activation_bytes: sympy.Expr
    kv_bytes_per_token: sympy.Expr       # all layers
    kv_layers: int                       # causal attention executions per forward (per token)
    kv_bytes: sympy.Expr                 # for the model's batch and sequence
    groups: list[GroupIO] = field(default_factory=list)
    attention: list[AttentionIO] = field(default_factory=list)
    on_chip: int = ON_CHIP

    @property
    def body_flops(self) -> sympy.Expr:
        return expand(self.flops - self.head_flops)

    @property
    def kv_bytes_per_token_per_layer(self) -> sympy.Expr:
        return sympy.nsimplify(self.kv_bytes_per_token / self.kv_layers) if self.kv_layers else ZERO

    def to_json(self) -> dict[str, Any]:
        return {
            "params": self.params, "flops": str(self.flops), "body_flops": str(self.body_flops),
            "head_flops": str(self.head_flops), "head": self.head, "activation_bytes": str(self.activation_bytes),
            "kv_cache": {"bytes_per_token_per_layer": str(self.kv_bytes_per_token_per_layer),
                         "layers": self.kv_layers, "bytes_per_token": str(self.kv_bytes_per_token),
                         "bytes": str(self.kv_bytes)},
            "on_chip_elements": self.on_chip,
            "fusion_groups": [{"block": g.block, "name": g.name, "kind": g.kind, "nodes": g.nodes,
                               "count": str(g.count), "unfused_bytes": str(g.unfused), "fused_bytes": str(g.fused)}
                              for g in self.groups],
            "attention": [{"block": a.block, "node": a.node, "causal": a.causal, "count": str(a.count),
                           "unfused_bytes": str(a.unfused), "fused_bytes": str(a.fused), "flops": str(a.flops)}
                          for a in self.attention],
        }


def nbytes(t: Type) -> sympy.Expr:
    if isinstance(t, tuple):
        return sympy.Add(*[nbytes(x) for x in t]) if t else ZERO
    return t.numel() * DTYPE_BYTES[t.dtype]


def estimate(model: Model, *, on_chip: int = ON_CHIP, optimized: Model | None = None) -> Cost:
    """The costs of `model`, taken on `optimized` (default: `model` at -O2; pass the model itself when it
    already is the graph to cost)."""
    if optimized is None:
        from nnspec.compiler.passes import optimize
        optimized = optimize(model, level=2)
    return _Estimator(optimized, on_chip).run(Analysis(model).total_params())


def flops(model: Model, **free: int) -> sympy.Expr:
    """FLOPs per forward pass by the convention above; a number when every free dim is given."""
    f = estimate(model).flops
    return f.xreplace({model.dims.free[k]: sympy.Integer(v) for k, v in free.items()}) if free else f


class _Estimator:
    def __init__(self, model: Model, on_chip: int) -> None:
        self.model = model
        self.sizes = model.dims
        self.on_chip = on_chip
        self.free = set(model.dims.free.values()) - set(model.dims.values)
        self.counts = self._counts()

    def c(self, expr: sympy.Basic | int) -> sympy.Expr:
        return expand(self.sizes.concrete(expr))

    def graph(self, name: str) -> Graph:
        return self.model.templates[name]

    def run(self, params: int) -> Cost:
        model = self.model
        head_nodes = [n for n in _heads(model.graph)]
        total = self._flops(model.graph)
        head = sum((self._node_flops(model.graph, n) for n in head_nodes), ZERO)
        kv_token, kv_layers, kv_total = self._kv_cache()
        return Cost(params, self.c(total), self.c(head), [_describe_head(model.graph, n) for n in head_nodes],
                    self._activation_peak(), kv_token, kv_layers, kv_total, self._groups(), self._attention(),
                    self.on_chip)

    # ---- how often each block runs ----
    def _counts(self) -> dict[str, sympy.Expr]:
        counts: dict[str, sympy.Expr] = {self.model.graph.name: sympy.Integer(1)}

        def visit(graph: Graph, times: sympy.Expr) -> None:
            for node in graph:
                for block, n in _runs(node).items():
                    counts[block] = counts.get(block, ZERO) + times * n
                    visit(self.graph(block), times * n)
        visit(self.model.graph, sympy.Integer(1))
        return counts

    # ---- FLOPs ----
    def _flops(self, graph: Graph) -> sympy.Expr:
        return sympy.Add(*[self._node_flops(graph, n) for n in graph]) if graph.nodes else ZERO

    def _node_flops(self, graph: Graph, node: Node) -> sympy.Expr:
        if runs_block(node):
            return sympy.Add(*[n * self._flops(self.graph(b)) for b, n in _runs(node).items()])
        f = OPS[node.op].flops(graph.input_types(node), node.type, node.attrs)
        if node.op == "attention" and node.attrs["causal"]:
            f = f / 2
        return f

    # ---- activation memory ----
    def _activation_peak(self) -> sympy.Expr:
        cands = _prune([self.c(x) for x in self._peaks(self.model.graph, top=True)], self.free)
        return cands[0] if len(cands) == 1 else sympy.Max(*cands)

    def _peaks(self, graph: Graph, top: bool = False) -> list[sympy.Expr]:
        """Candidate peak byte counts inside one execution of `graph` (its inputs are the caller's)."""
        root: dict[str, str] = {}
        size: dict[str, sympy.Expr] = {}
        for node in graph:
            if OPS[node.op].has("view"):
                root[node.name] = root[node.inputs[0]]
            else:
                root[node.name] = node.name
                size[node.name] = nbytes(node.type) if _allocates(graph, node, top) else ZERO
        order = list(graph.nodes)
        last = {r: i for i, n in enumerate(order) for r in [root[x] for x in graph[n].inputs]}
        for o in graph.outputs:
            last[root[o]] = len(order)
        live, cands = ZERO, []
        for i, name in enumerate(order):
            node = graph[name]
            if runs_block(node):
                inner = _prune([self.c(x) for b in _runs(node) for x in self._peaks(self.graph(b))], self.free)
                extra = nbytes(node.type) if node.op == "scan" else ZERO   # the stacked outputs
                cands.extend(live + extra + x for x in inner)
            if root[name] == name:
                live += size[name]
                cands.append(live)
            for r in {root[x] for x in node.inputs} | {root[name]}:
                if last.get(r, i) == i and r in size:
                    live -= size[r]
        return cands

    # ---- KV cache ----
    def _kv_cache(self) -> tuple[sympy.Expr, int, sympy.Expr]:
        per_token, layers, total = ZERO, ZERO, ZERO
        for graph in self.model.graphs():
            n = self.counts.get(graph.name, ZERO)
            for node in graph:
                if node.op != "attention" or not node.attrs["causal"]:
                    continue
                k, v = (graph[i].tensor_type for i in cached_values(graph, node))  # as the step stores them
                kv = nbytes(k) + nbytes(v)
                per = [a.size for a in k.axes if a.name == node.attrs["key"] or self.free & a.size.free_symbols]
                per_token += n * kv / sympy.Mul(*per)
                layers += n
                total += n * kv
        count = self.c(layers)
        return self.c(per_token), int(count) if count.is_Integer else 0, self.c(total)

    # ---- memory traffic ----
    def _groups(self) -> list[GroupIO]:
        out = []
        for graph in self.model.graphs():
            for g in graph.meta.get("fusion_groups", {}).values():
                out.append(GroupIO(graph.name, g.name, g.kind, list(g.nodes), self.c(self.counts.get(graph.name, 0)),
                                   *group_io(graph, g, self.c)))
        return out

    def _attention(self) -> list[AttentionIO]:
        out = []
        for graph in self.model.graphs():
            for node in graph:
                if node.op == "attention":
                    unfused, fused = attention_io(graph, node, self.sizes, self.on_chip)
                    out.append(AttentionIO(graph.name, node.name, node.attrs["causal"],
                                           self.c(self.counts.get(graph.name, 0)), unfused, fused,
                                           self.c(self._node_flops(graph, node))))
        return out


def _allocates(graph: Graph, node: Node, top: bool) -> bool:
    """Whether a (non-view) node's result is a new activation: not parameters and buffers (state), nor a scalar
    `const`; inputs only of the model (a block's inputs are its caller's tensors)."""
    if OPS[node.op].has("state") or node.op == "const":
        return False
    return top or node.name not in graph.inputs


def _runs(node: Node) -> dict[str, sympy.Expr]:
    """Block -> how many times one execution of `node` runs it (a repeat's variants run other blocks)."""
    if node.op == "call":
        return {node.attrs["block"]: sympy.Integer(1)}
    if node.op == "scan":
        return {node.attrs["block"]: node.attrs["axis"].size}
    if node.op == "repeat":
        return {b: sympy.Integer(n) for b, n in repeat_counts(node.attrs, weights=False).items()}
    return {}


def group_io(graph: Graph, group: FusionGroup, c: Any = sympy.expand) -> tuple[sympy.Expr, sympy.Expr]:
    """(bytes moved unfused, bytes moved fused) for one execution of a fusion group."""
    unfused = sum((nbytes(graph[i].type) for m in group.nodes for i in graph[m].inputs), ZERO)
    unfused += sum((nbytes(graph[m].type) for m in group.nodes), ZERO)
    fused = sum((nbytes(graph[i].type) for i in group.inputs), ZERO) + sum((nbytes(graph[o].type)
                                                                           for o in group.outputs), ZERO)
    return c(unfused), c(fused)


def attention_io(graph: Graph, node: Node, sizes: Any, on_chip: int = ON_CHIP) -> tuple[sympy.Expr, sympy.Expr]:
    """(bytes unfused, bytes fused) for one attention by the napkin formulas (see the module docstring)."""
    from nnspec.compiler.ops.attention import attention_types
    q_t, k_t, v_t = (graph[i].tensor_type for i in node.inputs[:3])
    pending = len(sizes.pending)
    scores, _ = attention_types([q_t, k_t, v_t], node.attrs, sizes)
    del sizes.pending[pending:]
    a = node.attrs
    x = k_t.axis(a["key"]).size  # type: ignore[union-attr]
    d = q_t.axis(a["dim"]).size  # type: ignore[union-attr]
    e = sympy.Mul(*[ax.size for ax in v_t.axes if ax.name != a["key"] and ax.name not in scores.names])
    own = [ax.size for ax in q_t.axes if ax.name not in k_t.names and ax.name != a["dim"]]
    q = q_t.axis(a["query"]).size if a["query"] in q_t.names else sympy.Mul(*own)  # type: ignore[union-attr]
    heads = scores.numel() / (q * x)
    extra = sum((nbytes(graph[i].type) for i in node.inputs[3:]), ZERO)
    width = DTYPE_BYTES[q_t.dtype]
    unfused = heads * (q * d + x * d + x * e + q * e + 4 * q * x) * width + extra
    fused = heads * (q * d + q * e + (x * d + x * e) * sympy.Max(1, q * (d + e) / on_chip)) * width + extra
    return expand(sizes.concrete(unfused)), expand(sizes.concrete(fused))


def _heads(graph: Graph) -> list[Node]:
    """Main-graph nodes that produce a model output by a linear or a contraction with a parameter."""
    out = []
    for name in dict.fromkeys(graph.outputs):
        node = graph[name]
        while node.op == "rearrange":
            node = graph[node.inputs[0]]
        if node.op in ("linear", "einsum") and any(_is_param(graph, i) for i in node.inputs[1:] or node.inputs):
            out.append(node)
    return out


def _is_param(graph: Graph, name: str) -> bool:
    node = graph[name]
    while (OPS[node.op].has("view") or node.op == "concat") and node.inputs:   # a view of (fused) weights
        node = graph[node.inputs[0]]
    return node.op == "param"


def _describe_head(graph: Graph, node: Node) -> str:
    params = [graph[i] for i in node.inputs if _is_param(graph, i)]
    paths = ", ".join(p.attrs["path"] for p in params if p.op == "param")
    return f"{node.name} = {node.op}({', '.join(node.inputs)})" + (f" with {paths}" if paths else "")


def _prune(cands: list[sympy.Expr], free: set[sympy.Symbol]) -> list[sympy.Expr]:
    """Drop candidates that another candidate is at least as large as for every positive value of the free
    dims (coefficient-wise, as polynomials with the difference's coefficients all non-negative)."""
    uniq = list(dict.fromkeys(expand(x) for x in cands)) or [ZERO]
    syms = sorted(free, key=str)

    def dominates(a: sympy.Expr, b: sympy.Expr) -> bool:
        diff = expand(a - b)
        if expanded_terms(diff) > MAX_EXPANDED_TERMS:
            return False            # kept factored (too many terms): no coefficient-wise proof either way
        if diff.is_Number:
            return bool(diff >= 0)
        try:
            return all(co >= 0 for co in sympy.Poly(diff, *syms).coeffs())
        except sympy.PolynomialError:
            return False

    keep: list[sympy.Expr] = []
    for x in sorted(uniq, key=lambda e: -float(e.subs({s: 64 for s in syms}))):
        if not any(dominates(k, x) for k in keep):
            keep.append(x)
    return keep


# ---- polynomials in the free dims as text: `nnspec check --cost` tables and transform summaries ----
def monomial(expr: sympy.Expr) -> str:
    """`B·T²`: the free dims of one term (its coefficient divided out), each with its power, in name order."""
    return "·".join((f"{base}" if base.is_Atom else f"({base})") + ("" if e == 1 else "²" if e == 2 else f"^{e}")
                    for base, e in sorted(expr.as_powers_dict().items(), key=lambda kv: str(kv[0])) if base != 1)


def format_flops(expr: sympy.Expr) -> str:
    """`2.4e+08·B·T + 3.8e+04·B·T²`: every coefficient to 4 digits, terms in sympy's order (the one-line form
    transform summaries print; `fmt` is the tables')."""
    terms = []
    for term in sympy.Add.make_args(expand(expr)):
        coeff, rest = term.as_coeff_Mul()
        dims = monomial(rest)
        terms.append(f"{float(coeff):.4g}" + (f"·{dims}" if dims else ""))
    return " + ".join(terms) or "0"


def fmt(expr: sympy.Expr, unit: str = "") -> str:
    """A polynomial in the free dims with short coefficients (`2.476e+08·B·T + 1.879e+04·B·T²`, longest term
    first; a coefficient of 1 left out, whole ones with separators), or a number (bytes also in KiB/MiB/GiB)."""
    expr = expand(expr)
    if expr.is_Number:
        n = float(expr)
        text = f"{int(n):,}" if n == int(n) and abs(n) < 1e15 else f"{n:.4g}"
        if unit == "B" and n >= 1024:
            k = next(i for i in range(3, 0, -1) if n >= 1024 ** i or i == 1)
            text += f" ({n / 1024 ** k:.3g} {['KiB', 'MiB', 'GiB'][k - 1]})"
        return text
    terms = []
    for term in sympy.Add.make_args(expr):
        coeff, rest = term.as_coeff_Mul()
        if rest == 1:
            terms.append(fmt(coeff))
            continue
        c = float(coeff)
        terms.append(("" if c == 1 else f"{int(c):,}·" if c == int(c) and abs(c) < 1e6 else f"{c:.4g}·")
                     + monomial(rest))
    return " + ".join(sorted(terms, key=len, reverse=True))


def print_cost(cost: Cost, console: Any) -> None:
    """Print the cost model as `nnspec check --cost` shows it (a rich Console)."""
    from rich.table import Table

    table = Table(title="cost model (at -O2; conventions: docs/language.md, FLOPs)", title_justify="left")
    table.add_column("quantity")
    table.add_column("formula", justify="right")
    table.add_row("parameters", fmt(sympy.Integer(cost.params)))
    table.add_row("FLOPs, body", fmt(cost.body_flops))
    for head in cost.head:
        table.add_row("FLOPs, output head", f"{fmt(cost.head_flops)}  [{head}]")
    table.add_row("FLOPs, total", fmt(cost.flops))
    table.add_row("activation peak, bytes", fmt(cost.activation_bytes, "B"))
    if cost.kv_layers:
        table.add_row("KV cache, bytes per token per layer", fmt(cost.kv_bytes_per_token_per_layer, "B"))
        table.add_row(f"KV cache, bytes per token ({cost.kv_layers} layers)", fmt(cost.kv_bytes_per_token, "B"))
        table.add_row("KV cache, bytes", fmt(cost.kv_bytes, "B"))
    console.print(table)
    if not cost.groups and not cost.attention:
        return
    io = Table(title=f"memory traffic per execution, bytes (FlashAttention on a Napkin; M = {cost.on_chip} "
               "elements on chip)", title_justify="left")
    for col, justify in [("block", "left"), ("group", "left"), ("ops", "left"), ("runs", "right"),
                         ("unfused", "right"), ("fused", "right")]:
        io.add_column(col, justify=justify)  # type: ignore[arg-type]
    for a in cost.attention:
        io.add_row(a.block, "attention" + (" (causal)" if a.causal else ""), a.node, fmt(a.count),
                   fmt(a.unfused, "B"), fmt(a.fused, "B"))
    for g in cost.groups:
        io.add_row(g.block, f"{g.name}", ", ".join(g.nodes), fmt(g.count), fmt(g.unfused, "B"), fmt(g.fused, "B"))
    console.print(io)
