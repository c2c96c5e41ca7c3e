"""Contraction by axis names: an einsum whose axes are the tensors' own names."""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.ir import Axis, TensorType, Type
from nnspec.compiler.ops.elementwise import broadcast
from nnspec.compiler.ops.registry import need_float, need_same_dtype, op, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


def einsum_string(ins: list[TensorType], out: TensorType) -> str:
    letters: dict[str, str] = {}
    for t in [*ins, out]:
        for n in t.names:
            letters.setdefault(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[len(letters)])
    return ",".join("".join(letters[n] for n in t.names) for t in ins) + "->" + "".join(letters[n] for n in out.names)


def _einsum_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    axes: dict[str, sympy.Expr] = {}
    for t in ins:
        for a in tensor(t, "x").axes:
            axes[a.name] = a.size
    total = sympy.Mul(*axes.values()) if axes else sympy.Integer(1)
    return 2 * (len(ins) - 1) * total


@op("einsum", "contract", doc="Multiply the operands (aligned by axis name) and sum every axis not in `out`; "
    "`out` lists the result's axes in order.", attrs={"out": tuple}, arity=(1, 8), glyph="•",
    flops=_einsum_flops, flops_doc="2·(operands-1)·product of all distinct axis sizes", traits=("matmul",))
def _einsum(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    ts = [tensor(t, "contraction") for t in ins]
    for t in ts:
        need_float(t, "contraction")
    axes = {a.name: a for a in broadcast(ts, sizes, "contraction")}
    out: list[Axis] = []
    for name in attrs["out"]:
        if name not in axes:
            raise SpecError("E017", f"contraction result axis '{name}' is not an axis of any operand "
                            f"(operands have {', '.join(axes)})")
        out.append(axes[name])
    if len(set(attrs["out"])) != len(attrs["out"]):
        raise SpecError("E017", f"contraction result names an axis twice: {', '.join(attrs['out'])}")
    need_same_dtype(ts, "contraction")  # torch.einsum does not promote
    return TensorType(tuple(out), ts[0].dtype)
