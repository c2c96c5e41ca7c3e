"""Attention and positional encodings.

`attention` is softmax(q·k * scale + bias, masked) · v with every axis named: q and k contract axis `dim`,
k and v share the key axis `key`, and any other axes broadcast by name. Grouped-query attention needs no
special case: q[B, T, kv_heads, groups, d] against k[B, S, kv_heads, d] broadcasts k over `groups`.
"""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.ir import Axis, DType, TensorType, Type
from nnspec.compiler.ops.elementwise import broadcast
from nnspec.compiler.ops.nn import unique_axes
from nnspec.compiler.ops.registry import find_axis, need_float, need_same_dtype, need_same_size, op, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


def attention_types(ins: list[TensorType], attrs: dict[str, Any], sizes: Sizes) -> tuple[TensorType, TensorType]:
    """(scores type, output type) of an attention node."""
    q, k, v = ins[:3]
    dim, key = attrs["dim"], attrs["key"]
    find_axis(q, dim, "attention query")
    find_axis(k, dim, "attention key")
    find_axis(k, key, "attention key")
    find_axis(v, key, "attention value")
    if key in q.names:
        raise SpecError("E017", f"attention: the key axis '{key}' must not be an axis of the query {q}; relabel "
                        "the keys, e.g. k[B, S, ...]")
    need_same_size(sizes, q.axis(dim).size, k.axis(dim).size,  # type: ignore[union-attr]
                   f"attention: query and key disagree on axis {dim}")
    q_rest = TensorType(tuple(a for a in q.axes if a.name != dim), q.dtype)
    k_rest = TensorType(tuple(a for a in k.axes if a.name != dim), k.dtype)
    scores = TensorType(broadcast([q_rest, k_rest], sizes, "attention scores"), q.dtype)
    value_axes = tuple(a for a in v.axes if a.name != key and a.name not in scores.names)
    broadcast([scores, TensorType(tuple(a for a in v.axes if a.name != key and a.name in scores.names), v.dtype)],
              sizes, "attention values")
    i = q.index(dim)
    out_axes = q_rest.axes[:i] + value_axes + q_rest.axes[i:]
    extra = tuple(a for a in scores.axes if a.name not in {x.name for x in out_axes} and a.name != key)
    order = attrs.get("scores")
    if order is not None:   # the scores laid out in this axis order (where dropout draws its numbers over them)
        if sorted(order) != sorted(scores.names):
            raise SpecError("E017", f"attention: scores order {', '.join(order)} does not name the scores' axes "
                            f"[{', '.join(scores.names)}]")
        scores = TensorType(tuple(scores.axes[scores.index(n)] for n in order), scores.dtype)
    return scores, TensorType(unique_axes(out_axes + extra, "attention"), q.dtype)


def _attention_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    q, k, v = (tensor(t, "x") for t in ins[:3])
    scores = sympy.Integer(1)
    seen: dict[str, sympy.Expr] = {}
    for t in (q, k):
        for a in t.axes:
            if a.name != attrs["dim"]:
                seen[a.name] = a.size
    scores = sympy.Mul(*seen.values())
    d = q.axis(attrs["dim"]).size  # type: ignore[union-attr]
    value = sympy.Mul(*[a.size for a in v.axes if a.name != attrs["key"] and a.name not in seen])
    return 2 * scores * d + 2 * scores * value + 5 * scores


@op("attention", "contract", doc="`softmax(q·k * scale + bias, where mask) · v`: q, k contract axis `dim`; k, v "
    "share key axis `key` (softmax runs over it); other axes broadcast by name (GQA by a group axis). "
    "`causal` masks keys after the query position along axis `query`. Optional inputs: a bool mask "
    "(true = attend) and an additive bias, each with axes among the scores' axes. Optional `dropout`: the "
    "probability of dropping an attention probability in training mode (the identity in eval mode); optional "
    "`scores`: the scores' axis order, over which dropout draws its random numbers; optional `mask_causal`: the "
    "mask already holds the causal triangle (`causal-into-mask`), so a backend need not and it in again.",
    attrs={"dim": str, "key": str, "query": str, "causal": bool, "scale": float, "has_mask": bool,
           "has_bias": bool, "dropout": float, "scores": tuple, "mask_causal": bool},
    optional=("dropout", "scores", "mask_causal"), arity=(3, 5),
    glyph="Attn",
    flops=_attention_flops,
    flops_doc="2·|scores|·dim + 2·|scores|·value + 5·|scores|", traits=("keeps_float32",))
def _attention(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    ts = [tensor(t, "attention") for t in ins]
    for t in ts[:3]:
        need_float(t, "attention")
    need_same_dtype(ts[:3], "attention (query, key, value)")
    scores, out = attention_types(ts, attrs, sizes)
    extra = ts[3:]
    if len(extra) != int(attrs["has_mask"]) + int(attrs["has_bias"]):
        raise SpecError("E019", "attention: mask/bias inputs do not match has_mask/has_bias")
    if attrs["has_mask"]:
        mask = extra.pop(0)
        if mask.dtype != DType.bool:
            raise SpecError("E013", f"attention mask must be bool (true = attend), got {mask}; "
                            "compare it first, e.g. mask == 1")
        _within(mask, scores, sizes, "mask")
    if attrs["has_bias"]:
        bias = extra.pop(0)
        need_float(bias, "attention bias")
        need_same_dtype([ts[0], bias], "attention (query, bias)")
        _within(bias, scores, sizes, "bias")
    if attrs["causal"]:
        find_axis(ts[0], attrs["query"], "causal attention query axis")
    return out


def _within(t: TensorType, scores: TensorType, sizes: Sizes, what: str) -> None:
    for a in t.axes:
        if a.name not in scores.names:
            raise SpecError("E017", f"attention {what} axis '{a.name}' is not an axis of the scores "
                            f"[{', '.join(scores.names)}]")
    broadcast([scores, t], sizes, f"attention {what}")


@op("rotary", "elementwise", doc="Rotary position embedding (RoFormer; the `half` layout of GPT-NeoX/Llama, or "
    "`interleaved` pairs as GPT-J): rotate pairs along axis `dim` by angle position·base^(-2i/dim) for the "
    "position along axis `pos` (0, 1, ... or an int64 `positions` input). The optimiser may add the cos and sin "
    "tables of those positions (`rotary_tables`, made once per forward) as third and fourth inputs, which the "
    "rotation then reads instead of computing them.",
    attrs={"pos": str, "dim": str, "base": float, "style": str}, arity=(1, 4), glyph="RoPE",
    flops=lambda ins, out, attrs: 3 * tensor(out, "y").numel(), flops_doc="3 per element")
def _rotary(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "rotary")
    need_float(x, "rotary")
    find_axis(x, attrs["pos"], "rotary position axis")
    d = x.axes[find_axis(x, attrs["dim"], "rotary feature axis")].size
    value = sizes.value(d)
    if value is not None and value % 2:
        raise SpecError("E014", f"rotary needs an even feature size, {attrs['dim']} is {value}")
    if attrs["style"] not in ("half", "interleaved"):
        raise SpecError("E015", f"rotary style must be 'half' or 'interleaved', got {attrs['style']!r}")
    if len(ins) == 3:
        raise SpecError("E019", "rotary takes x, or x and positions, or x, positions and both the cos and sin tables")
    if len(ins) >= 2:
        p = tensor(ins[1], "rotary positions")
        if not p.dtype.is_int or (p.names != (attrs["pos"],) and attrs["pos"] not in p.names):
            raise SpecError("E013", f"rotary positions must be an integer tensor with axis {attrs['pos']}, got {p}")
        want = (*p.names, attrs["dim"])
        for t in (tensor(table, "rotary table") for table in ins[2:]):
            if not t.dtype.is_float or t.names != want:
                raise SpecError("E013", f"rotary tables must be float [{', '.join(want)}], got {t}")
    return x


@op("rotary_tables", "elementwise", doc="The cos and sin tables rotary embedding multiplies by, for int64 "
    "`positions`: float32 `[positions' axes..., dim]`, the angle position·base^(-2i/dim) for i < dim/2, each "
    "frequency twice (the half layout; the interleaved rotation reads the first half). Made by the optimiser from "
    "a `rotary`, so every layer's rotations read one table.", attrs={"dim": Axis, "base": float}, arity=1,
    glyph="cos sin", flops=lambda ins, out, attrs: 2 * tensor(out[0], "cos").numel(), flops_doc="2 per element",
    traits=("keeps_float32",))
def _rotary_tables(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    p = tensor(ins[0], "rotary_tables positions")
    if not p.dtype.is_int:
        raise SpecError("E013", f"rotary positions must be an integer tensor, got {p}")
    table = TensorType((*p.axes, attrs["dim"]), DType.float32)
    return (table, table)


@op("sinusoidal", "source", doc="Fixed sinusoidal position table (Vaswani et al. 2017): "
    "`[pos, 2i] = sin(pos / base^(2i/dim))`, `[pos, 2i+1] = cos(...)`.",
    attrs={"pos": Axis, "dim": Axis, "base": float}, arity=0, glyph="∿",
    traits=("source", "float_source", "costly_source"))
def _sinusoidal(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    value = sizes.value(attrs["dim"].size)
    if value is not None and value % 2:
        raise SpecError("E014", f"sinusoidal encoding needs an even size, got {value}")
    return TensorType((attrs["pos"], attrs["dim"]), DType.float32)
