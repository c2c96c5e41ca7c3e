"""Ops along one named axis: softmax keeps it, reductions remove it."""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.ir import DType, TensorType, Type
from nnspec.compiler.ops.registry import find_axis, need_float, op, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


def _per_element(cost: int, of_input: bool) -> Any:
    def flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
        return cost * tensor(ins[0] if of_input else out, "x").numel()
    return flops


@op("softmax", "reduce", doc="`exp(x - max) / sum(exp(x - max))` along axis `axis`.", attrs={"axis": str},
    arity=1, glyph="▷", flops=_per_element(5, True), flops_doc="5 per element", traits=("keeps_float32",))
def _softmax(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "softmax")
    need_float(x, "softmax")
    find_axis(x, attrs["axis"], "softmax")
    return x


def _reduce_rule(name: str, needs_float: bool) -> Any:
    def rule(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
        x = tensor(ins[0], name)
        if needs_float:
            need_float(x, name)
        elif x.dtype.value == "bool":
            raise SpecError("E013", f"{name} of a bool tensor {x}; cast it first")
        i = find_axis(x, attrs["axis"], name)
        # torch.sum of an integer tensor accumulates and returns int64
        dtype = DType.int64 if name == "sum" and x.dtype.is_int else x.dtype
        return TensorType(x.axes[:i] + x.axes[i + 1:], dtype)
    return rule


for _name, _float, _doc in [("sum", False, "Sum"), ("mean", True, "Mean"), ("amax", False, "Maximum"),
                            ("amin", False, "Minimum")]:
    op(_name, "reduce", doc=f"{_doc} over axis `axis`, which is removed.", attrs={"axis": str}, arity=1,
       glyph="Σ" if _name == "sum" else _name, flops=_per_element(1, True),
       flops_doc="1 per input element",   # sum and mean accumulate; amax and amin are exact in any dtype
       traits=("keeps_float32",) if _name in ("sum", "mean") else ())(_reduce_rule(_name, _float))
