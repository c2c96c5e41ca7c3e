"""The attention ops' torch rules: each op's reference lowering beside its code emitter."""

from __future__ import annotations

from typing import Any

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.absent_masks import may_be_none
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import align, align_tensor, dim, input_types, permute
from nnspec.backends.torch.lazy import F, runtime, torch
from nnspec.backends.torch.ops.contract import contract
from nnspec.backends.torch.pysrc import Expr, Lit, call, method
from nnspec.backends.torch.rules import emits, lowers
from nnspec.compiler.ir import DType, Node, TensorType
from nnspec.compiler.ops.attention import attention_types
from nnspec.compiler.ops.contract import einsum_string

NEG_INF = P.lit(float("-inf"))


@lowers("attention")
def _lower_attention(frame: Frame, node: Node, ins: list[Any]) -> Any:
    types = input_types(frame, node)
    q_t, k_t, v_t = types[:3]
    scores_t, out_t = attention_types(types, node.attrs, frame.interp.model.dims)
    q, k, v = ins[:3]
    s = torch.einsum(einsum_string([q_t, k_t], scores_t), q, k) * node.attrs["scale"]
    extra = list(zip(ins[3:], types[3:], strict=True))
    if node.attrs["has_mask"]:
        m, m_t = extra.pop(0)
        s = s.masked_fill(~align_tensor(m, m_t, scores_t.names), float("-inf"))
    if node.attrs["has_bias"]:
        bias, b_t = extra.pop(0)
        s = s + align_tensor(bias, b_t, scores_t.names)
    if node.attrs["causal"]:
        qn, kn = node.attrs["query"], node.attrs["key"]
        tq, tk = s.shape[scores_t.index(qn)], s.shape[scores_t.index(kn)]
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=s.device).tril()
        allowed_t = TensorType((scores_t.axis(qn), scores_t.axis(kn)), DType.bool)  # type: ignore[arg-type]
        s = s.masked_fill(~align_tensor(allowed, allowed_t, scores_t.names), float("-inf"))
    p = torch.softmax(s, dim=scores_t.index(node.attrs["key"]))
    if node.attrs.get("dropout", 0.0) > 0:   # on the probabilities, in training mode only
        p = F.dropout(p, node.attrs["dropout"], training=frame.module.training)
    return torch.einsum(einsum_string([scores_t, v_t], out_t), p, v)


@emits("attention")
def _emit_attention(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """Spelled out as the reference does: scores, masks, softmax over the key axis, weighted values."""
    a = node.attrs
    types = [fn.in_type(node, i) for i in range(len(ins))]
    scores_t, out_t = attention_types(types, a, fn.mg.model.dims)
    if fn.mg.options.sdpa:
        fused = _sdpa(fn, node, ins, types, scores_t, out_t)
        if fused is not None:
            return fused
    names = scores_t.names
    qk = contract(ins[:2], types[:2], scores_t, size=fn.size, bind=lambda e, c: fn.let(e, "qk", comment=c))
    s = fn.let(P.binop("*", qk, P.lit(a["scale"])), "scores", comment=_comment(scores_t))
    extra = list(zip(ins[3:], types[3:], strict=True))
    if a["has_mask"]:
        m, m_t = extra.pop(0)
        s = fn.let(_unless_none(fn, node, method(s, "masked_fill", P.Unary("~", align(m, m_t, names)), NEG_INF), m,
                                s), "scores", rebind=s)
    if a["has_bias"]:
        bias, b_t = extra.pop(0)
        s = fn.let(P.binop("+", s, align(bias, b_t, names)), "scores", rebind=s)
    if a["causal"] and not (a.get("mask_causal") and not _none_mask(fn, node)):   # else the mask holds it
        allowed, mask_t = _causal(fn, a, scores_t)
        s = fn.let(method(s, "masked_fill", P.Unary("~", align(allowed, mask_t, names)), NEG_INF), "scores",
                   rebind=s)
    p = call("F.softmax", s, dim=dim(scores_t, a["key"]))
    if a.get("dropout", 0.0) > 0:
        p = call("F.dropout", p, a["dropout"], P.dotted("self.training"))
    return contract([p, ins[2]], [scores_t, types[2]], out_t, size=fn.size,
                    bind=lambda e, c: fn.let(e, "pv", comment=c))


def _sdpa(fn: FunctionGen, node: Node, ins: list[Expr], types: list[TensorType], scores_t: TensorType,
          out_t: TensorType) -> Expr | None:
    """`F.scaled_dot_product_attention` when q, k and v share their batch axes (no broadcast, so no grouped
    heads). A boolean mask (and causality with it) becomes SDPA's `attn_mask`; see `_masked`."""
    a = node.attrs
    q_t, k_t, v_t = types[:3]
    qn, kn, dn = a["query"], a["key"], a["dim"]
    batch = [n for n in scores_t.names if n not in (qn, kn)]
    value = [n for n in v_t.names if n not in batch and n != kn]
    if a.get("dropout", 0.0) > 0 and scores_t.names != (*batch, qn, kn):
        return None     # SDPA drops over [batch..., q, k]: spelled out, dropout draws as the spec's does
    shared = [n for n in batch if n in k_t.names]
    if qn is None or (shared and len(shared) < len(batch)):
        folded = _sdpa_folded(fn, node, ins, types, scores_t, out_t)
        if folded is not None or qn is None:
            return folded
        return _sdpa_grouped(fn, node, ins, types, scores_t, out_t, shared)
    if len(value) != 1 or sorted(q_t.names) != sorted([*batch, qn, dn]) or \
            sorted(k_t.names) != sorted([*batch, kn, dn]) or sorted(v_t.names) != sorted([*batch, kn, *value]) or \
            sorted(out_t.names) != sorted([*batch, qn, *value]):
        return None
    # SDPA's fused CPU kernel takes 4-d q, k, v and a mask of q's rank: with more batch axes (Swin's [B, nh, nw,
    # heads]) or a mask of lower rank (a bias [heads, N, M]) it runs its unfused math, 4-5x slower (RESULTS.md).
    # So the leading batch axes are flattened into one (a view here), and a mask gets q's rank
    lead = len(batch) - 1 if len(batch) > 2 and not _none_mask(fn, node) else 0
    names = (*batch, qn, kn)
    m_t = types[3] if a["has_mask"] or a["has_bias"] else None
    expand = bool(lead and m_t is not None and set(batch[:lead]) & set(m_t.names))
    mask_names = names if not lead or expand else ("\0batch", *names[lead:])   # size 1 where folded
    masked = _masked(fn, node, ins, types, scores_t, mask_names) if a["has_mask"] else None
    if a["has_mask"] and masked is None:
        return None
    q = permute(ins[0], [q_t.index(n) for n in (*batch, qn, dn)])
    k = permute(ins[1], [k_t.index(n) for n in (*batch, kn, dn)])
    v = permute(ins[2], [v_t.index(n) for n in (*batch, kn, *value)])
    if lead:
        q, k, v = (method(x, "flatten", 0, lead - 1) for x in (q, k, v))
        if masked is not None and expand:
            masked = fn.let(_fold_mask(fn, masked, scores_t, names, lead), "allowed", rebind=masked)
    kwargs: dict[str, Any] = {}
    if masked is not None:
        kwargs["attn_mask"] = masked
        if a["causal"] and _none_mask(fn, node):   # no mask given: the causal kernel
            kwargs["is_causal"] = P.binop("is", masked, P.Lit(None))
    elif a["has_bias"]:
        if a["causal"]:
            return None
        bias = align(ins[3], types[3], mask_names, full=True)
        kwargs["attn_mask"] = _fold_mask(fn, bias, scores_t, names, lead) if expand else bias
    elif a["causal"]:
        kwargs["is_causal"] = True
    if a.get("dropout", 0.0) > 0:   # SDPA drops probabilities whenever dropout_p > 0: only while training
        kwargs["dropout_p"] = P.IfExp(P.lit(a["dropout"]), P.dotted("self.training"), P.lit(0.0))
    y: Expr = call("F.scaled_dot_product_attention", q, k, v, **kwargs, scale=a["scale"])
    if masked is not None:   # two statements: the call, then its empty rows
        y = fn.let(y, "y", comment="(" + ", ".join([*batch, qn, *value]) + ")")
        if not a.get("rows_see_a_key"):   # (a decoding step's cache mask: each row sees its own slot)
            y = fn.let(_unless_none(fn, node, _empty_rows_nan(fn, y, masked), masked, y), "y", rebind=y)
    if lead:   # the call a statement of its own: the split after it reads as in the fused layouts above
        y = y if masked is not None else fn.let(y, "y", comment="(" + ", ".join([" ".join(batch[:lead]),
                                                                                  *batch[lead:], qn, *value]) + ")")
        y = method(y, "unflatten", 0, P.TupleExpr(tuple(fn.size(scores_t.axis(n).size)  # type: ignore[union-attr]
                                                        for n in batch[:lead])))
    perm = [[*batch, qn, *value].index(n) for n in out_t.names]
    if perm != sorted(perm):   # a statement of its own, so the permute after it reads as in nanoGPT
        y = fn.let(y, "y", comment="(" + ", ".join([*batch, qn, *value]) + ")")
    return permute(y, perm)


def _sdpa_folded(fn: FunctionGen, node: Node, ins: list[Expr], types: list[TensorType], scores_t: TensorType,
                 out_t: TensorType) -> Expr | None:
    """Attention whose queries have axes that k and v lack besides the query axis (PVT's `q[B, H, W, heads, d]`
    against `k[B, S, heads, d]`, Swin-like windows, grouped heads `q[B, T, kv, group, d]`): those axes are
    query rows like the query axis's, so they are flattened into one query axis of SDPA (a view of q where its
    layout allows) and split back after. Unmasked, unbiased, non-causal attention without dropout only (a
    causal mask over one of the folded axes would mean something else)."""
    a = node.attrs
    q_t, k_t, v_t = types[:3]
    kn, dn = a["key"], a["dim"]
    shared = [n for n in scores_t.names if n in k_t.names and n != kn]
    rows = [n for n in scores_t.names if n not in shared and n != kn]
    value = [n for n in v_t.names if n not in shared and n != kn]
    if a["has_mask"] or a["has_bias"] or a["causal"] or a.get("dropout", 0.0) > 0 or not shared or \
            len(value) != 1 or sorted(q_t.names) != sorted([*shared, *rows, dn]) or \
            sorted(k_t.names) != sorted([*shared, kn, dn]) or sorted(v_t.names) != sorted([*shared, kn, *value]) \
            or sorted(out_t.names) != sorted([*shared, *rows, *value]):
        return None
    q = permute(ins[0], [q_t.index(n) for n in (*shared, *rows, dn)])
    if len(rows) > 1:
        q = method(q, "flatten", len(shared), len(shared) + len(rows) - 1)
    k = permute(ins[1], [k_t.index(n) for n in (*shared, kn, dn)])
    v = permute(ins[2], [v_t.index(n) for n in (*shared, kn, *value)])
    y: Expr = fn.let(call("F.scaled_dot_product_attention", q, k, v, scale=a["scale"]), "y",
                     comment="(" + ", ".join([*shared, " ".join(rows), *value]) + ")")
    if len(rows) > 1:
        y = method(y, "unflatten", len(shared), P.TupleExpr(tuple(fn.size(q_t.axis(n).size)  # type: ignore[union-attr]
                                                                  for n in rows)))
    order = [*shared, *rows, *value]
    return permute(y, [order.index(n) for n in out_t.names])


def _sdpa_grouped(fn: FunctionGen, node: Node, ins: list[Expr], types: list[TensorType], scores_t: TensorType,
                  out_t: TensorType, shared: list[str]) -> Expr | None:
    """Grouped-query attention (q has head axes k and v lack, as `q[B, T, kv, group, d]` against
    `k[B, S, kv, d]`) as SDPA with `enable_gqa`: q's heads are laid out kv-major, so query head h reads key/value
    head h // group, as SDPA does. Plain causal or unmasked attention only (no mask, bias or dropout)."""
    a = node.attrs
    q_t, k_t, v_t = types[:3]
    qn, kn, dn = a["query"], a["key"], a["dim"]
    group = [n for n in scores_t.names if n not in (qn, kn) and n not in shared]
    value = [n for n in v_t.names if n not in shared and n != kn]
    if a["has_bias"] or a.get("dropout", 0.0) > 0 or len(value) != 1 or \
            sorted(q_t.names) != sorted([*shared, *group, qn, dn]) or sorted(k_t.names) != sorted([*shared, kn, dn]) \
            or sorted(v_t.names) != sorted([*shared, kn, *value]) or \
            sorted(out_t.names) != sorted([*shared, *group, qn, *value]):
        return None
    # the mask may carry the batch axis and the query/key axes, not the head axes flattened below
    masked = _masked(fn, node, ins, types, scores_t, (shared[0], "\0heads", qn, kn)) if a["has_mask"] else None
    if a["has_mask"] and (masked is None or set(types[3].names) - {shared[0], qn, kn}):
        return None

    def size(t: TensorType, n: str) -> Expr:
        return fn.size(t.axis(n).size)  # type: ignore[union-attr]

    def heads(x: Expr, t: TensorType, order: list[str]) -> Expr:
        y = permute(x, [t.index(n) for n in order])
        if len(order) == 4:
            return y
        return method(y, "reshape", size(t, order[0]), Lit(-1), size(t, order[-2]), size(t, order[-1]))
    q = heads(ins[0], q_t, [*shared, *group, qn, dn])
    k = heads(ins[1], k_t, [*shared, kn, dn])
    v = heads(ins[2], v_t, [*shared, kn, *value])
    kwargs: dict[str, Any] = {"attn_mask": masked} if masked is not None else \
        {"is_causal": True} if a["causal"] else {}
    if masked is not None and a["causal"] and _none_mask(fn, node):   # no mask given: the causal kernel
        kwargs["is_causal"] = P.binop("is", masked, P.Lit(None))
    order = [*shared, *group, qn, *value]
    y: Expr = fn.let(call("F.scaled_dot_product_attention", q, k, v, **kwargs, scale=a["scale"], enable_gqa=True),
                     "y", comment="(" + ", ".join([shared[0], "heads", qn, *value]) + ")")
    if masked is not None and not a.get("rows_see_a_key"):   # (see `_sdpa`)
        y = fn.let(_unless_none(fn, node, _empty_rows_nan(fn, y, masked), masked, y), "y", rebind=y)
    y = method(y, "reshape", *[size(out_t, n) for n in order])
    return permute(y, [order.index(n) for n in out_t.names])


def _causal(fn: FunctionGen, a: dict[str, Any], scores_t: TensorType) -> tuple[Expr, TensorType]:
    """The causal triangle: bool [query, key], True where the query may see the key (the key not after it)."""
    qa, ka = scores_t.axis(a["query"]), scores_t.axis(a["key"])
    assert qa is not None and ka is not None
    allowed = method(call("torch.ones", fn.size(qa.size), fn.size(ka.size), dtype=fn.dtype(DType.bool),
                          **fn.device_kw()), "tril")
    return allowed, TensorType((qa, ka), DType.bool)


def _masked(fn: FunctionGen, node: Node, ins: list[Expr], types: list[TensorType], scores_t: TensorType,
            names: tuple[str, ...]) -> Expr | None:
    """The boolean mask as SDPA's `attn_mask` laid out as `names` (its last two the query and key axes), with
    causality folded in (SDPA takes a mask or `is_causal`, not both) unless the mask holds it already
    (`mask_causal`: and-ed in once per forward by `causal-into-mask`); bound to a name, since the empty-row
    fix-up reads it again. None with a bias as well (one `attn_mask` cannot carry both)."""
    a = node.attrs
    if a["has_bias"] or not set(types[3].names) <= set(names):
        return None
    m = align(ins[3], types[3], names, full=True)
    if a["causal"] and not a.get("mask_causal"):   # the query and key axes, last in `names`: the triangle broadcasts
        triangle = _causal(fn, a, scores_t)[0]
        m = P.binop("&", m, fn.let(triangle, "causal") if _none_mask(fn, node) else triangle)
    m = _unless_none(fn, node, m, ins[3], P.Lit(None))
    shown = ", ".join(n for n in names if not n.startswith("\0"))   # not the placeholders of folded axes
    return fn.let(m, "allowed", comment=f"({shown}): keys each query sees")


def _fold_mask(fn: FunctionGen, m: Expr, scores_t: TensorType, names: tuple[str, ...], lead: int) -> Expr:
    """A mask or bias aligned to `names` (the batch axes, query, key) that has some of the first `lead` batch
    axes, for SDPA with those flattened into one: expanded to the scores' shape and flattened (a copy where it
    broadcast over some of them)."""
    sizes = [fn.size(scores_t.axis(n).size) for n in names]  # type: ignore[union-attr]
    expanded = fn.let(method(m, "expand", *sizes), "mask", comment="(" + ", ".join(names) + ")")
    return method(expanded, "flatten", 0, lead - 1)


def _none_mask(fn: FunctionGen, node: Node) -> bool:
    """Is the node's boolean mask a block input the caller passes as None when it masks nothing
    (`absent_masks`: GPT-2's without an `attention_mask`)?"""
    return bool(node.attrs["has_mask"]) and may_be_none(fn, node.inputs[3])


def _unless_none(fn: FunctionGen, node: Node, value: Expr, mask: Expr, otherwise: Expr) -> Expr:
    """`value`, or `value if mask is not None else otherwise` where the mask may be passed as None."""
    if not _none_mask(fn, node):
        return value
    return P.IfExp(value, P.binop("is not", mask, P.Lit(None)), otherwise)


def _empty_rows_nan(fn: FunctionGen, y: Expr, allowed: Expr) -> Expr:
    """SDPA gives 0 for a query that sees no key; the spec's softmax over all -inf gives NaN. Kept NaN, so the
    fused form computes what the spec says (a cheap reduction over the mask, not over the scores)."""
    empty = P.Unary("~", method(allowed, "any", Lit(-1), keepdim=P.lit(True)))
    return method(y, "masked_fill", empty, P.lit(float("nan")))


def _comment(t: TensorType) -> str:
    return "(" + ", ".join(t.names) + ")"


@lowers("rotary")
def _lower_rotary(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    t = input_types(frame, node)[0]
    pos, dim = node.attrs["pos"], node.attrs["dim"]
    n, d = x.shape[t.index(pos)], x.shape[t.index(dim)]
    if len(ins) == 4:   # the tables made once (`rotary_tables`), in float32: cast as the runtime helper casts them
        cos, sin = ins[2].to(x.dtype), ins[3].to(x.dtype)
    else:
        cos, sin = runtime.rotary_tables(n, d, node.attrs["base"], ins[1] if len(ins) > 1 else None, x.device,
                                         x.dtype)
    table_t = _rotary_table_type(node, t, input_types(frame, node))
    cos, sin = align_tensor(cos, table_t, t.names), align_tensor(sin, table_t, t.names)
    apply = runtime.apply_rotary if node.attrs["style"] == "half" else runtime.apply_rotary_interleaved
    return apply(x, cos, sin, t.index(dim))


@emits("rotary")
def _emit_rotary(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    t = fn.in_type(node, 0)
    pos, feat = t.axis(a["pos"]), t.axis(a["dim"])
    assert pos is not None and feat is not None
    x = ins[0]
    positions = ins[1] if len(ins) > 1 else Lit(None)
    if len(ins) == 4:   # made once per forward (`rotary_tables`), in float32: cast to x's dtype (free when equal)
        cos, sin = _cast_to(ins[2], x), _cast_to(ins[3], x)
    else:
        cos, sin = fn.let_many(call(fn.mg.helper("rotary_tables"), fn.size(pos.size), fn.size(feat.size), a["base"],
                                    positions, P.Attr(x, "device"), P.Attr(x, "dtype")), ["cos", "sin"])
    table = _rotary_table_type(node, t, [fn.in_type(node, i) for i in range(len(ins))])
    apply = "apply_rotary" if a["style"] == "half" else "apply_rotary_interleaved"
    return call(fn.mg.helper(apply), x, align(cos, table, t.names), align(sin, table, t.names),
                t.index(a["dim"]))


def _cast_to(table: Expr, x: Expr) -> Expr:
    """A float32 table in x's dtype (`Tensor.to` returns the table itself when they agree: no copy in float32)."""
    return method(table, "to", P.Attr(x, "dtype"))


@lowers("rotary_tables")
def _lower_rotary_tables(frame: Frame, node: Node, ins: list[Any]) -> Any:
    d = frame.size(node.attrs["dim"].size)
    return runtime.rotary_tables(ins[0].shape[-1], d, node.attrs["base"], ins[0], ins[0].device, torch.float32)


@emits("rotary_tables")
def _emit_rotary_tables(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """cos and sin of every position, once: the rotations of every layer read them (`rotary_tables` node)."""
    n = fn.size(fn.in_type(node, 0).axes[-1].size)   # the helper's length, read only without positions
    refs = fn.let_many(call(fn.mg.helper("rotary_tables"), n, fn.size(node.attrs["dim"].size),
                            node.attrs["base"], ins[0], P.Attr(ins[0], "device"), P.dotted("torch.float32")),
                       ["cos", "sin"])
    return P.TupleExpr(tuple(refs))


def _rotary_table_type(node: Node, t: TensorType, types: list[TensorType]) -> TensorType:
    """The cos/sin tables' axes: [pos, dim], or the positions' axes then dim (per-row positions, [B, pos, dim])."""
    lead = types[1].axes if len(types) > 1 else (t.axis(node.attrs["pos"]),)
    return TensorType((*lead, t.axis(node.attrs["dim"])), t.dtype)  # type: ignore[arg-type]


@lowers("sinusoidal")
def _lower_sinusoidal(frame: Frame, node: Node, ins: list[Any]) -> Any:
    n, d = frame.size(node.attrs["pos"].size), frame.size(node.attrs["dim"].size)
    return runtime.sinusoidal_table(n, d, node.attrs["base"], frame.device)


@emits("sinusoidal")
def _emit_sinusoidal(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    return call(fn.mg.helper("sinusoidal_table"), fn.size(a["pos"].size), fn.size(a["dim"].size), a["base"],
                **fn.device_kw())
