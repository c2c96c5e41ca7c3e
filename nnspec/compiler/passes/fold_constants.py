"""Constant folding: an elementwise op whose operands are all constants (`const` scalars or `full` tensors)
becomes one constant of its result's type.

Sound because the folded value is the one the op computes: operands are first rounded to their dtypes,
the operation is done in float64 (or exactly, on integers and booleans) and the result rounded once to the
result dtype. For + - * / and sqrt that single rounding of the float64 result is the correctly rounded
result in float32, float16 and bfloat16 (float64 carries more than 2p + 2 bits for each), which is what
IEEE hardware computes, so folding changes no bit. Transcendental functions, powers and integer division
are not correctly rounded everywhere and are left alone, as is anything that would divide by zero or
overflow an integer type.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from nnspec.compiler.ir import DType, Graph, Node, TensorType
from nnspec.compiler.ops.elementwise import POINTWISE
from nnspec.compiler.passes.base import Context

_INT_RANGE = {DType.int64: 1 << 63, DType.int32: 1 << 31}


def round_to(value: Any, dtype: DType) -> Any:
    """`value` as the given dtype holds it (round to nearest even; integers truncate toward zero)."""
    if dtype == DType.bool:
        return bool(value)
    if dtype.is_int:
        v = int(value)   # truncation, as torch's .to(int) does
        if not -_INT_RANGE[dtype] <= v < _INT_RANGE[dtype]:
            raise OverflowError(f"{v} does not fit {dtype}")
        return v
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        return v
    if dtype == DType.float32:
        return struct.unpack("f", struct.pack("f", v))[0]
    if dtype == DType.float16:
        return struct.unpack("e", struct.pack("e", v))[0]
    bits = struct.unpack("I", struct.pack("f", v))[0]                 # bfloat16: float32's top 16 bits,
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000            # rounded to nearest even
    return struct.unpack("f", struct.pack("I", bits))[0]


def constant_of(node: Node) -> tuple[Any, DType] | None:
    if node.op == "const":
        return node.attrs["value"], node.attrs["type"].dtype
    if node.op == "full":
        return node.attrs["value"], node.attrs["dtype"]
    return None


def evaluate(op: str, attrs: dict[str, Any], values: list[Any], dtypes: list[DType], out: DType) -> Any:
    """The folded value, or None when folding would not be exact. An elementwise op folds by its row's `scalar`
    (in float64, or exactly on integers and booleans) for the operand kinds its `folds` names; where the
    `scalar` raises (a division by zero, max of a NaN) the node is left alone."""
    xs = [round_to(v, d) for v, d in zip(values, dtypes, strict=True)]
    if op == "where":
        return round_to(xs[1] if xs[0] else xs[2], out)
    if op == "cast":
        return round_to(xs[0], out) if not (out.is_int and isinstance(xs[0], float) and not math.isfinite(xs[0])) \
            else None
    row = POINTWISE.get(op)
    if row is None or row.scalar is None or len(set(dtypes)) > 1:
        return None   # mixed dtypes round through the promoted one first; not worth modelling
    kind = _kind(dtypes[0])
    if kind not in row.folds:
        return None
    args = [float(x) for x in xs] if kind == "float" else [int(x) for x in xs] if kind == "int" else xs
    try:
        return round_to(row.scalar(*args), out)
    except (ArithmeticError, ValueError):   # 1/0, sqrt(-1), max(nan, x), an integer overflowing its dtype
        return None


def _kind(dtype: DType) -> str:
    return "float" if dtype.is_float else "int" if dtype.is_int else "bool"


@dataclass(frozen=True)
class FoldConstants:
    name: str = "fold-constants"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        changed = False
        for node in list(graph):
            operands = [constant_of(graph[i]) for i in node.inputs]
            if not node.inputs or any(c is None for c in operands) or not isinstance(node.type, TensorType):
                continue
            try:
                value = evaluate(node.op, node.attrs, [c[0] for c in operands], [c[1] for c in operands],  # type: ignore[index]
                                 node.type.dtype)
            except (OverflowError, ValueError, TypeError):
                value = None
            if value is None:
                continue
            t = node.type
            if t.axes:
                new = graph.insert_before(node.name, "full", [], {"axes": t.axes, "value": value, "dtype": t.dtype},
                                          t, node.span, hint="full")
            else:
                new = graph.insert_before(node.name, "const", [], {"value": value, "type": t}, t, node.span,
                                          hint="const")
            graph.replace_uses(node.name, new.name)
            graph.erase(node.name)
            ctx.explain.rewrite(self.name, graph, node, f"{node.name} = {node.op} of constants folded to {value!r}")
            changed = True
        return graph, changed
