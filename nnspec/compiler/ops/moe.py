"""A sparse top-k mixture of SwiGLU experts (Shazeer et al. 2017; Mixtral, Qwen2-MoE) as one op.

Its meaning is the dense gated sum: every expert's output weighted by its routing weight, which is zero for the
experts a token's router did not pick. Only k experts per token contribute, so its FLOPs are those of k experts
(the active FLOPs a sparse kernel runs), whatever a backend spends computing it.
"""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.ir import Type
from nnspec.compiler.ops.registry import find_axis, need_float, need_same_dtype, need_same_size, op, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


def _moe_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    x, gate = tensor(ins[0], "x"), tensor(ins[2], "gate_proj")
    experts, hidden, width = gate.sizes
    tokens = x.numel() / width
    router = 2 * width * experts + 5 * experts                # the router's product and its softmax
    expert = 6 * width * hidden + 5 * hidden + 2 * width      # three products, silu(gate)·up, weight and add
    return tokens * (router + attrs["k"] * expert)


@op("moe", "nn", doc="Top-k mixture of SwiGLU experts over axis `axis` of x (Mixtral's sparse MoE block). Inputs: "
    "x, router `[E, H]`, gate_proj and up_proj `[E, I, H]`, down_proj `[E, H, I]`. Per token: p = softmax(router·x) "
    "over the E experts, the `k` largest kept (divided by their sum when `norm_topk_prob`, as Mixtral; Qwen2-MoE "
    "makes it an option), the rest zero; y = Σₑ pₑ · down_projₑ(silu(gate_projₑ x) ⊙ up_projₑ x). The result has "
    "x's axes.", attrs={"axis": str, "k": int, "norm_topk_prob": bool}, arity=5, glyph="MoE", flops=_moe_flops,
    flops_doc="active FLOPs, k experts per token: N·(2·H·E + 5·E + k·(6·H·I + 5·I + 2·H)), N = numel(x)/H",
    traits=("matmul",))
def _moe(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "moe")
    router, gate, up, down = (tensor(t, f"moe {what}") for t, what in
                              zip(ins[1:], ("router", "gate_proj", "up_proj", "down_proj"), strict=True))
    need_float(x, "moe")
    need_same_dtype([x, router, gate, up, down], "moe (input, router, experts)")
    width = x.axes[find_axis(x, attrs["axis"], "moe")]
    if router.rank != 2 or gate.rank != 3 or up.rank != 3 or down.rank != 3:
        raise SpecError("E012", f"moe weights must be router [E, H] and experts [E, I, H], [E, I, H], [E, H, I]; got "
                        f"{router}, {gate}, {up}, {down}")
    experts, hidden = gate.axes[0].size, gate.axes[1].size
    for what, got, want in (("router", router.sizes, (experts, width.size)), ("up_proj", up.sizes, gate.sizes),
                            ("down_proj", down.sizes, (experts, width.size, hidden))):
        for g, w in zip(got, want, strict=True):
            need_same_size(sizes, g, w, f"moe {what} {sizes.describe(g)} does not match {sizes.describe(w)} (x's "
                           f"axis {width.name}, {sizes.describe(experts)} experts of width {sizes.describe(hidden)})")
    n = sizes.value(experts)
    if attrs["k"] < 1 or (n is not None and attrs["k"] > n):
        raise SpecError("E012", f"moe: k={attrs['k']} must be between 1 and the number of experts ({n})")
    return x
