"""`moe(...)`: a top-k mixture of SwiGLU experts with stacked expert weights."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.builtins.core import INIT_STD, REQUIRED, bind, over_axis
from nnspec.compiler.elaborate import Surface, builtin
from nnspec.compiler.ir import Axis
from nnspec.errors import SpecError
from nnspec.spec import ast


@builtin("moe", "moe(x, experts, hidden, k, over=last, norm_topk_prob=true, name=moe)",
         "Top-k mixture of `experts` SwiGLU experts of width `hidden` (Mixtral's sparse MoE block): parameters "
         "`router` [experts, H] and stacked `gate_proj`, `up_proj` [experts, hidden, H], `down_proj` "
         "[experts, H, hidden]; `norm_topk_prob` renormalises the k chosen routing weights to sum to 1.")
def _moe(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "moe", [("x", REQUIRED), ("experts", REQUIRED), ("hidden", REQUIRED), ("k", REQUIRED),
                              ("over", None), ("norm_topk_prob", None), ("name", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "moe", call.span)
    width = b.type_of(x).axis(over)
    assert width is not None
    experts = b.size(a["experts"], "moe experts")  # type: ignore[arg-type]
    hidden = b.size(a["hidden"], "moe hidden size")  # type: ignore[arg-type]
    # a weight's axes need distinct names, though the sizes may be one dim (experts as wide as the model...)
    if hidden.name == width.name:
        hidden = Axis(f"{hidden.name}_hidden", hidden.size)
    if experts.name in (width.name, hidden.name):
        experts = Axis(f"{experts.name}_experts", experts.size)
    k = b.ints(a["k"], 1, "moe k")[0]  # type: ignore[arg-type]
    n = b.sizes.value(experts.size)
    if k < 1 or (n is not None and k > n):
        raise SpecError("E012", f"moe: k={k} must be between 1 and the number of experts ({n})",
                        a["k"].span)  # type: ignore[union-attr]
    norm = True if a["norm_topk_prob"] is None else b.flag(a["norm_topk_prob"], "norm_topk_prob")
    scope = b.claim_scope(b.scope_kwarg(call), "moe", call.span)
    init = ("normal", INIT_STD)
    inputs = [x.node,
              b.param(scope, "router", (experts, width), init, call.span).node,
              b.param(scope, "gate_proj", (experts, hidden, width), init, call.span).node,
              b.param(scope, "up_proj", (experts, hidden, width), init, call.span).node,
              b.param(scope, "down_proj", (experts, width, hidden), init, call.span).node]
    return b.emit("moe", inputs, {"axis": over, "k": k, "norm_topk_prob": norm}, call.span, hint=scope)
