"""Attention recognition: spelled-out `softmax(q·k * s + bias, masked) · v` becomes one `attention` node.

Matched, walking up from a `softmax` over axis K whose result (maybe through a dropout) is contracted with
the values over K, and nothing else:

    scores = einsum(q, k)                # sums exactly one axis D of both; only k has K
    scores = scores * c | scores / c     # positive constants, any number, also on q or k before the product
    scores = scores + bias               # float tensors with axes among the scores' (additive masks)
    scores = scores + 0.0                # a zero constant (Swin's unshifted windows: `s + mask`, mask 0.0)
    scores = where(m, scores, -inf)      # bool masks, true = attend (`where(m, -inf, scores)`: true = masked)
    p = dropout(softmax(scores, over=K)) # dropout optional; the softmax may be computed in float32
                                         # between casts (cast(softmax(cast(s, float32)), bf16))
    o = einsum(p, v)                     # sums exactly K

Result: `attention(q, k, v, [mask], [bias], dim=D, key=K, scale=product of the constants)`, with `causal` set
when a mask is `causal_mask(Q, K)` for a query axis Q (several masks are and-ed, several biases added; a
rearrange restores the original result's axis order when the fused op's differs). GQA needs nothing
special: the attention op broadcasts by axis name as the einsums did.

Sound because the attention op computes exactly this: softmax over K of (q·k · scale), masked to -inf where
the mask is false, plus the bias, contracted with v over K. Positive scaling commutes with -inf masking, and
a constant scale moved from q or k onto q·k is the same product; adding 0.0 changes no score (only -0.0's
sign, which softmax ignores). The rewrite changes rounding only.

Dropout on the probabilities: with `training=True` (what `nnspec compile` and `nnspec.build` run) it moves
into the attention op (`dropout=p`: the same dropout of the probabilities in training mode, the identity in
eval mode; the random draws differ from the spelled-out dropout's, as any two dropout calls' do). Without
it (optimised graphs for inference) a dropout with p > 0 is dropped, which is exact in eval mode, and is
said in the explanation. With dropout the node also records the probabilities' axis order (`scores`), so the
reference interpreter and the generated code draw the same random numbers as the spelled-out form did.

Refused with a reason (never rewritten): a scale that is a tensor or not a positive constant, a scale applied
after the bias, a fill other than -inf (`where(m, s, 0)`, `-1e9`: not the same for fully masked rows), a
mask or bias with axes the scores lack, softmax over an axis the value product does not sum, a value product
summing other axes too, scores or probabilities used elsewhere, products of more than two operands.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nnspec.compiler.ir import Graph, Node, TensorType
from nnspec.compiler.passes.base import (
    Context,
    Refusal,
    const_value,
    positive_number,
    same_axes,
    sole_user,
    tensor_type,
    users_text,
)
from nnspec.errors import SpecError

NEG_INF = float("-inf")


@dataclass
class Match:
    softmax: Node
    key: str
    pv: Node
    v: str
    dropout_p: float = 0.0
    q: str = ""
    k: str = ""
    dim: str = ""
    scale: float = 1.0
    masks: list[str] = field(default_factory=list)      # bool, true = attend
    negated: list[str] = field(default_factory=list)    # bool, true = masked
    biases: list[str] = field(default_factory=list)
    causal: Node | None = None                          # a causal_mask node over (query axis, key axis)
    dead: list[str] = field(default_factory=list)       # replaced nodes, users first
    upcast: bool = False                                # softmax was computed in float32 between casts

    def copy(self) -> Match:
        return replace(self, masks=list(self.masks), negated=list(self.negated), biases=list(self.biases),
                       dead=list(self.dead))


@dataclass(frozen=True)
class RecognizeAttention:
    name: str = "attention"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for sm in list(graph):
            if sm.op != "softmax" or sm.name not in graph.nodes:
                continue
            try:
                m = self._match(ctx, graph, sm)
                self._rewrite(ctx, graph, m)
                changed = True
            except Refusal as why:
                if _looks_like_attention(graph, sm):
                    ctx.explain.refuse(self.name, graph, sm, f"softmax {sm.name} not fused into attention: {why}")
        return graph, changed

    # ---- matching ----
    def _match(self, ctx: Context, graph: Graph, sm: Node) -> Match:
        key = sm.attrs["axis"]
        p = sm
        nxt = sole_user(graph, sm.name)
        if nxt is None:
            raise Refusal(f"the probabilities are used by {users_text(graph.users(sm.name))}")
        upcast: Node | None = None      # softmax in float32 (cast up before, maybe), then back to bf16/fp16
        downcast = nxt if nxt.op == "cast" and nxt.attrs["dtype"].is_float else None
        if downcast is not None:
            up = graph[sm.inputs[0]]
            if up.op == "cast" and sole_user(graph, up.name) is sm \
                    and tensor_type(graph, up.inputs[0]).dtype == downcast.attrs["dtype"]:
                upcast = up
            p, nxt = downcast, sole_user(graph, downcast.name)
            if nxt is None:
                raise Refusal(f"the probabilities are used by {users_text(graph.users(p.name))}")
        dropout_p = 0.0
        if nxt.op == "dropout":
            dropout_p = nxt.attrs["p"]
            p = nxt
            nxt = sole_user(graph, nxt.name)
            if nxt is None:
                raise Refusal(f"the dropped-out probabilities are used by {users_text(graph.users(p.name))}")
        if nxt.op != "einsum" or len(nxt.inputs) != 2 or nxt.inputs[0] == nxt.inputs[1]:
            raise Refusal(f"the probabilities feed {nxt.op} {nxt.name}, not a product with the values")
        pv = nxt
        v = pv.inputs[1] if pv.inputs[0] == p.name else pv.inputs[0]
        p_t, v_t = tensor_type(graph, p.name), tensor_type(graph, v)
        if key not in v_t.names:
            raise Refusal(f"the values {v} have no axis {key}, the axis the softmax normalises")
        summed = (set(p_t.names) | set(v_t.names)) - set(pv.attrs["out"])
        if key not in summed:
            raise Refusal(f"the value product {pv.name} does not sum over {key}, the softmax axis (it sums "
                          f"{', '.join(sorted(summed)) or 'nothing'})")
        if summed != {key}:
            raise Refusal(f"the value product {pv.name} also sums over {', '.join(sorted(summed - {key}))}")
        dead = [pv.name] + [n.name for n in (p, downcast) if n is not None and n is not sm]
        m = Match(sm, key, pv, v, dropout_p, dead=list(dict.fromkeys([*dead, sm.name] + ([upcast.name] if upcast
                                                                                        else []))),
                  upcast=downcast is not None)
        top = upcast if upcast is not None else sm
        m = self._walk_scores(graph, m, top.inputs[0], top, seen_scale=False)
        q_t, k_t = tensor_type(graph, m.q), tensor_type(graph, m.k)
        dtypes = {q_t.dtype, k_t.dtype, v_t.dtype, tensor_type(graph, pv.name).dtype}
        if len(dtypes) != 1:
            raise Refusal(f"queries, keys, values and result have different dtypes ({', '.join(map(str, dtypes))})")
        return m

    def _walk_scores(self, graph: Graph, m: Match, name: str, user: Node, seen_scale: bool) -> Match:
        """Match the scores chain ending at `name` (read only by `user`), walking up to the product of
        queries and keys; `seen_scale`: a constant scale was applied after this point."""
        node = graph[name]
        if sole_user(graph, name) is not user:
            raise Refusal(f"the scores {name} are also used by "
                          f"{users_text([u for u in graph.users(name) if u is not user]) or 'the block output'}")
        out_t = tensor_type(graph, name)
        if node.op == "einsum":
            m.dead.append(name)
            self._match_product(graph, m, node)
            return m
        if node.op == "where":
            c, a, b = node.inputs
            fa, fb = const_value(graph, a), const_value(graph, b)
            if fb == NEG_INF and fa is None:
                chain, negated = a, False
            elif fa == NEG_INF and fb is None:
                chain, negated = b, True
            elif fa is not None or fb is not None:
                raise Refusal(f"{name} fills masked scores with {fb if fa is None else fa}, not -inf")
            else:
                raise Refusal(f"{name} chooses between two tensors, not scores and -inf")
            self._same_domain(graph, chain, out_t, f"the mask {c}")
            mask = graph[c]
            causal = mask.op == "causal_mask" and not negated and mask.attrs["k"].name == m.key \
                and mask.attrs["q"].name != m.key and m.causal is None
            if causal:
                m.causal = mask
            else:
                (m.negated if negated else m.masks).append(c)
            m.dead.append(name)
            return self._walk_scores(graph, m, chain, node, seen_scale)
        if node.op == "add":
            zero = [i for i in node.inputs if graph[i].op == "const" and const_value(graph, i) == 0]
            if len(zero) == 1:    # `s + 0.0`: the scores unchanged
                chain = next(i for i in node.inputs if i != zero[0])
                if tensor_type(graph, chain) == out_t:
                    m.dead.append(name)
                    return self._walk_scores(graph, m, chain, node, seen_scale)
            errors: list[Refusal] = []
            orders = sorted([node.inputs, node.inputs[::-1]], key=lambda o: not _has_product(graph, o[0]))
            for chain, bias in orders:
                if graph[bias].op == "const" or not tensor_type(graph, bias).dtype.is_float:
                    continue
                if seen_scale:
                    raise Refusal(f"the scores are scaled after the bias {bias} is added")
                trial = m.copy()
                trial.biases.append(bias)
                trial.dead.append(name)
                try:
                    self._same_domain(graph, chain, out_t, f"the bias {bias}")
                    return self._walk_scores(graph, trial, chain, node, seen_scale)
                except Refusal as why:
                    errors.append(why)
            raise errors[0] if errors else Refusal(f"{name} adds a constant or a non-float tensor to the scores")
        if node.op in ("mul", "div"):
            a, b = node.inputs
            if const_value(graph, b) is not None:
                chain, c = a, const_value(graph, b)
            elif node.op == "mul" and const_value(graph, a) is not None:
                chain, c = b, const_value(graph, a)
            else:
                tensor = b if node.op == "div" or _has_product(graph, a) else a
                raise Refusal(f"{name} {'divides' if node.op == 'div' else 'multiplies'} the scores by a tensor "
                              f"({tensor}), not a constant")
            if not positive_number(c):
                raise Refusal(f"the scale {c} in {name} is not a positive finite number")
            m.scale = m.scale * c if node.op == "mul" else m.scale / c  # type: ignore[operator]
            m.dead.append(name)
            return self._walk_scores(graph, m, chain, node, seen_scale=True)
        raise Refusal(f"the scores come from {node.op} {name}, not a product of queries and keys")

    def _same_domain(self, graph: Graph, chain: str, out_t: TensorType, what: str) -> None:
        t = tensor_type(graph, chain)
        if not same_axes(t, out_t):
            extra = [n for n in out_t.names if n not in t.names]
            raise Refusal(f"{what} adds axes {', '.join(extra)} that the scores lack")

    def _match_product(self, graph: Graph, m: Match, qk: Node) -> None:
        if len(qk.inputs) != 2 or qk.inputs[0] == qk.inputs[1]:
            raise Refusal(f"the scores {qk.name} are a product of {len(qk.inputs)} operands, not queries and keys")
        a, b = qk.inputs
        in_a, in_b = m.key in tensor_type(graph, a).names, m.key in tensor_type(graph, b).names
        if in_a == in_b:
            raise Refusal(f"{'both' if in_a else 'neither'} operand of {qk.name} has the softmax axis {m.key}")
        q, k = (b, a) if in_a else (a, b)
        q_t, k_t = tensor_type(graph, q), tensor_type(graph, k)
        summed = (set(q_t.names) | set(k_t.names)) - set(qk.attrs["out"])
        if len(summed) != 1 or not summed <= set(q_t.names) & set(k_t.names):
            raise Refusal(f"the score product {qk.name} sums over {', '.join(sorted(summed)) or 'nothing'}, not one "
                          "axis of both queries and keys")
        m.dim = summed.pop()
        m.q, m.k = self._unscale(graph, m, q, qk), self._unscale(graph, m, k, qk)

    def _unscale(self, graph: Graph, m: Match, name: str, user: Node) -> str:
        """Absorb `x * c` / `x / c` applied to q or k (and read only by the product) into the scale."""
        node = graph[name]
        while node.op in ("mul", "div") and sole_user(graph, node.name) is user:
            c = const_value(graph, node.inputs[1])
            src = node.inputs[0]
            if c is None and node.op == "mul":
                c, src = const_value(graph, node.inputs[0]), node.inputs[1]
            if not positive_number(c):
                break
            m.scale = m.scale * c if node.op == "mul" else m.scale / c  # type: ignore[operator]
            m.dead.append(node.name)
            user, node = node, graph[src]
        return node.name

    # ---- rewriting ----
    def _rewrite(self, ctx: Context, graph: Graph, m: Match) -> None:
        anchor, span = m.pv.name, m.pv.span
        q_t, k_t = tensor_type(graph, m.q), tensor_type(graph, m.k)
        query = ""
        if m.causal is not None:
            qn = m.causal.attrs["q"].name
            if qn in q_t.names and qn not in k_t.names:
                query = qn
            else:
                m.masks.append(m.causal.name)
                m.causal = None
        if not query:
            query = _query_axis(ctx, q_t, k_t, m.dim, m.key)

        def add(op: str, ins: list[str], attrs: dict, hint: str) -> str:
            t = ctx.infer(op, [graph[i].type for i in ins], attrs)
            return graph.insert_before(anchor, op, ins, attrs, t, span, hint).name

        def combined(names: list[str], op: str, hint: str) -> str | None:
            out = names[0] if names else None
            for other in names[1:]:
                out = add(op, [out, other], {}, hint)  # type: ignore[list-item]
            return out

        attrs = {"dim": m.dim, "key": m.key, "query": query, "causal": m.causal is not None, "scale": float(m.scale),
                 "has_mask": False, "has_bias": False}
        if m.dropout_p > 0 and ctx.training:
            # dropout draws one number per probability in memory order: keep the spelled-out scores' layout
            attrs["dropout"] = float(m.dropout_p)
            attrs["scores"] = tuple(tensor_type(graph, m.softmax.name).names)
        try:   # type-check first, so a refusal leaves the graph as it was
            probe = [graph[i].type for i in (m.q, m.k, m.v)]
            if m.masks or m.negated:
                probe.append(graph[(m.masks + m.negated)[0]].type)
                attrs["has_mask"] = True
            if m.biases:
                probe.append(graph[m.biases[0]].type)
                attrs["has_bias"] = True
            t = ctx.infer("attention", probe, attrs)
        except SpecError as err:
            raise Refusal(f"the attention op does not accept this form: {err.message}") from None
        if not same_axes(t, tensor_type(graph, m.pv.name)):   # type: ignore[arg-type]
            raise Refusal(f"the fused result would be {t}, the product gives {m.pv.type}")
        masks = m.masks + [add("logical_not", [n], {}, f"{n}_keep") for n in m.negated]
        mask = combined(masks, "logical_and", "mask")
        bias = combined(m.biases, "add", "bias")
        ins = [m.q, m.k, m.v] + [x for x in (mask, bias) if x is not None]
        att = add("attention", ins, attrs, m.pv.name)
        out = att
        target = tensor_type(graph, m.pv.name)
        if graph[att].type != target:
            got = tensor_type(graph, att)
            out = add("rearrange", [att], {"perm": tuple(got.index(n) for n in target.names), "axes": target.axes},
                      f"{att}_t")
        graph.replace_uses(m.pv.name, out)
        for name in m.dead:
            graph.erase(name)
        graph.relabel(out, m.pv.name)   # the fused result takes the name of the value it replaces
        if out == att:
            att = m.pv.name
        parts = [f"scale {m.scale:.6g}"]
        if m.causal is not None:
            parts.append(f"causal over {query}")
        if masks:
            parts.append(f"mask {mask}")
        if bias:
            parts.append(f"bias {bias}")
        if m.upcast:
            parts.append("the softmax's float32 is left to the fused op's accumulation")
        if m.dropout_p > 0 and ctx.training:
            parts.append(f"dropout p={m.dropout_p} on the probabilities done by the fused op (training mode)")
        elif m.dropout_p > 0:
            parts.append(f"dropout p={m.dropout_p} on the probabilities dropped (the identity in eval mode)")
        ctx.explain.rewrite(self.name, graph, m.softmax, f"{', '.join(reversed(m.dead))} -> attention {att}("
                            f"{m.q}, {m.k}, {m.v}; dim {m.dim}, key {m.key}): {'; '.join(parts)}")


def _query_axis(ctx: Context, q: TensorType, k: TensorType, dim: str, key: str) -> str:
    """The query position axis: q's own axis as long as the keys (how `attention(...)` guesses it)."""
    key_size = k.axis(key).size  # type: ignore[union-attr]
    own = [a for a in q.axes if a.name not in k.names and a.name != dim]
    same = [a.name for a in own if ctx.sizes.equal(a.size, key_size) is not False]
    if len(same) == 1:
        return same[0]
    return own[0].name if len(own) == 1 else ""


def _above(graph: Graph, name: str) -> set[str]:
    """`name` and the nodes a few elementwise steps above it."""
    seen: set[str] = set()
    todo = [name]
    while todo and len(seen) < 32:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            if graph[n].op in ("mul", "div", "add", "sub", "where", "neg", "cast"):
                todo.extend(graph[n].inputs)
    return seen


def _has_product(graph: Graph, name: str) -> bool:
    return any(graph[n].op == "einsum" for n in _above(graph, name))


def _looks_like_attention(graph: Graph, sm: Node) -> bool:
    """A softmax worth explaining a refusal for: it reads a product (through elementwise steps) or its result
    (maybe dropped out) is multiplied with something."""
    down: list[Node] = []
    for u in graph.users(sm.name):
        down += [u, *graph.users(u.name)] if u.op in ("dropout", "cast") else [u]
    return any(n.op == "einsum" for n in down) or _has_product(graph, sm.inputs[0])
