"""Attention and positional encodings."""

from __future__ import annotations

import math
from typing import Any

from nnspec.compiler.builtins.core import REQUIRED, bind, over_axis
from nnspec.compiler.elaborate import Surface, builtin
from nnspec.compiler.elaborate.tensor_types import show
from nnspec.errors import SpecError
from nnspec.spec import ast


@builtin("attention", "attention(q, k, v, key=AXIS, dim=last, query=AXIS, causal=false, mask=none, bias=none, "
         "scale=1/sqrt(dim), dropout=0)", "Scaled dot-product attention by axis names (GQA/MQA by broadcasting); "
         "`dropout=p` drops attention probabilities while training.")
def _attention(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "attention", [("q", REQUIRED), ("k", REQUIRED), ("v", REQUIRED), ("key", None), ("dim", None),
                                    ("query", None), ("causal", None), ("mask", None), ("bias", None),
                                    ("scale", None), ("dropout", None)])
    q, k, v = b.tensor(a["q"]), b.tensor(a["k"]), b.tensor(a["v"])  # type: ignore[arg-type]
    tq, tk = b.type_of(q), b.type_of(k)
    dim = over_axis(b, a["dim"], q, "attention", call.span)
    if a["key"] is not None:
        key = b.axis_name(a["key"])
        for what, t in (("keys", tk), ("values", b.type_of(v))):  # said at key=, not at the whole call
            if key not in t.names:
                raise SpecError("E017", f"attention: the {what} have no axis '{key}' ({show(t)}); name the "
                                f"sequence axis they are read along, as in {what[0]}[B, {key}, ...]", a["key"].span)
    else:
        only_k = [n for n in tk.names if n not in tq.names]
        if len(only_k) != 1:
            raise SpecError("E019", f"attention: say which axis of the keys is the key axis (key=...); the keys "
                            f"have {', '.join(only_k) or 'no axes'} beyond the query's", call.span)
        key = only_k[0]
    causal = False if a["causal"] is None else b.flag(a["causal"], "causal")
    query = ""
    if a["query"] is not None:
        query = b.axis_name(a["query"])
    elif causal:
        key_axis = tk.axis(key)
        candidates = [x.name for x in tq.axes if x.name not in tk.names and key_axis is not None
                      and b.sizes.equal(x.size, key_axis.size) is not False]
        if len(candidates) != 1:
            raise SpecError("E019", "causal attention: say which query axis is the position (query=...)", call.span)
        query = candidates[0]
    d = tq.axis(dim)
    assert d is not None
    if a["scale"] is not None:
        scale = b.number(a["scale"], "scale")
    else:
        n = b.sizes.value(d.size)
        if n is None:
            raise SpecError("E026", f"attention: give scale=...; the size of {dim} is not known", call.span)
        scale = 1.0 / math.sqrt(n)
    inputs = [q.node, k.node, v.node]
    has_mask = a["mask"] is not None
    has_bias = a["bias"] is not None
    if has_mask:
        inputs.append(b.tensor(a["mask"]).node)  # type: ignore[arg-type]
    if has_bias:
        inputs.append(b.tensor(a["bias"]).node)  # type: ignore[arg-type]
    attrs = {"dim": dim, "key": key, "query": query, "causal": causal, "scale": scale, "has_mask": has_mask,
             "has_bias": has_bias}
    if a["dropout"] is not None:
        p = b.number(a["dropout"], "attention dropout")
        if not 0.0 <= p < 1.0:
            raise SpecError("E015", f"attention dropout must be in [0, 1), got {p}", a["dropout"].span)
        if p > 0.0:   # no attribute at 0: the node is the one a spec without dropout= makes
            attrs["dropout"] = p
    return b.emit("attention", inputs, attrs, call.span)


@builtin("rotary", 'rotary(x, pos=AXIS, dim=last, base=10000, style="half", positions=none)',
         "Rotary position embedding.")
def _rotary(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "rotary", [("x", REQUIRED), ("pos", REQUIRED), ("dim", None), ("base", None), ("style", None),
                                 ("positions", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    pos = over_axis(b, a["pos"], x, "rotary", call.span)
    dim = over_axis(b, a["dim"], x, "rotary", call.span)
    base = 10000.0 if a["base"] is None else _base(b, a["base"])
    style = "half" if a["style"] is None else str(b.static(a["style"], "style"))
    inputs = [x.node]
    if a["positions"] is not None:
        positions = b.tensor(a["positions"])
        # the cos/sin tables are [pos, dim], or [B, pos, dim] for per-row positions (left-padded batches): one
        # position per index along `pos`, every other axis one of x's
        p_names = b.type_of(positions).names
        if pos not in p_names or any(n not in b.type_of(x).names for n in p_names):
            raise SpecError("E013", f"rotary positions must have the axis {pos} and only axes of the input "
                            f"{show(b.type_of(x))}, got {show(b.type_of(positions))}", a["positions"].span)
        inputs.append(positions.node)
    return b.emit("rotary", inputs, {"pos": pos, "dim": dim, "base": base, "style": style}, call.span)


@builtin("sinusoidal", "sinusoidal(POS, size, base=10000)", "Fixed sine/cosine position table.")
def _sinusoidal(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "sinusoidal", [("pos", REQUIRED), ("dim", REQUIRED), ("base", None)])
    pos = b.axis(b.axis_name(a["pos"]), a["pos"].span)  # type: ignore[arg-type, union-attr]
    dim = b.size(a["dim"], "sinusoidal size")  # type: ignore[arg-type]
    base = 10000.0 if a["base"] is None else _base(b, a["base"])
    return b.emit("sinusoidal", [], {"pos": pos, "dim": dim, "base": base}, call.span)


def _base(b: Surface, expr: ast.Expr) -> float:
    """The base of the frequencies base**(-2i/d): positive and finite, or every angle is NaN or infinite."""
    base = b.number(expr, "base")
    if not (math.isfinite(base) and base > 0):
        raise SpecError("E015", f"base must be a positive finite number, got {base}", expr.span)
    return base
