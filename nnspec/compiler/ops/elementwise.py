"""Elementwise ops. Operands broadcast by axis *name*: equal names align, the rest pass through.

The result's axes are the first operand's, then each later operand's new axes in order.
"""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.ir import Axis, DType, TensorType, Type
from nnspec.compiler.ops.registry import need_float, need_same_size, op, promote, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError

# name -> (formula for docs, glyph, FLOPs per element, needs float)
UNARY: dict[str, tuple[str, str, int, bool]] = {
    "neg": ("-x", "−", 1, False),
    "abs": ("|x|", "|·|", 1, False),
    "relu": ("max(x, 0)", "ReLU", 1, True),
    "gelu": ("x Φ(x) (exact, erf)", "GELU", 8, True),
    "gelu_tanh": ("0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))", "GELU~", 8, True),
    "silu": ("x σ(x)", "SiLU", 4, True),
    "sigmoid": ("1 / (1 + e^-x)", "σ", 4, True),
    "tanh": ("tanh x", "tanh", 4, True),
    "exp": ("e^x", "exp", 1, True),
    "log": ("ln x", "log", 1, True),
    "sqrt": ("√x", "√", 1, True),
    "rsqrt": ("1/√x", "1/√", 1, True),
    "logical_not": ("not x (bool)", "¬", 1, False),
}

# name -> (symbol, glyph, result is bool)
BINARY: dict[str, tuple[str, str, bool]] = {
    "add": ("+", "+", False), "sub": ("-", "−", False), "mul": ("*", "×", False), "div": ("/", "÷", False),
    "floordiv": ("//", "÷⌊⌋", False), "mod": ("%", "mod", False), "pow": ("**", "^", False),
    "maximum": ("max", "max", False), "minimum": ("min", "min", False),
    "eq": ("==", "=", True), "ne": ("!=", "≠", True), "lt": ("<", "<", True), "le": ("<=", "≤", True),
    "gt": (">", ">", True), "ge": (">=", "≥", True),
    "logical_and": ("and", "∧", True), "logical_or": ("or", "∨", True),
}


def broadcast(types: list[TensorType], sizes: Sizes, what: str) -> tuple[Axis, ...]:
    axes: dict[str, Axis] = {}
    for t in types:
        for a in t.axes:
            if a.name in axes:
                need_same_size(sizes, axes[a.name].size, a.size,
                               f"{what}: axis '{a.name}' has size {sizes.describe(axes[a.name].size)} in one "
                               f"operand and {sizes.describe(a.size)} in another")
            else:
                axes[a.name] = a
    return tuple(axes.values())


def _elementwise_flops(cost: int) -> Any:
    def flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
        return cost * tensor(out, "result").numel()
    return flops


def _unary_rule(name: str, needs_float: bool) -> Any:
    def rule(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
        x = tensor(ins[0], name)
        if needs_float:
            need_float(x, name)
        if name == "logical_not" and x.dtype != DType.bool:
            raise SpecError("E013", f"'not' expects a bool tensor, got {x}")
        if name == "neg" and x.dtype == DType.bool:
            raise SpecError("E013", f"cannot negate a bool tensor {x}")
        if name == "abs" and x.dtype == DType.bool:  # torch has no abs for bool
            raise SpecError("E013", f"abs of a bool tensor {x}; cast it first")
        return x
    return rule


def _binary_rule(name: str, symbol: str, boolean: bool) -> Any:
    def rule(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
        a, b = tensor(ins[0], name), tensor(ins[1], name)
        axes = broadcast([a, b], sizes, f"'{symbol}'")
        if name.startswith("logical_"):
            if a.dtype != DType.bool or b.dtype != DType.bool:
                raise SpecError("E013", f"'{symbol}' expects bool tensors, got {a} and {b}")
            return TensorType(axes, DType.bool)
        if not boolean and DType.bool in (a.dtype, b.dtype):
            raise SpecError("E013", f"arithmetic '{symbol}' on a bool tensor ({a} {symbol} {b}); "
                            "use where(mask, a, b) to select with a mask")
        return TensorType(axes, DType.bool if boolean else promote(a.dtype, b.dtype))
    return rule


for _name, (_formula, _glyph, _cost, _float) in UNARY.items():
    op(_name, "elementwise", doc=f"Elementwise `{_formula}`.", arity=1, glyph=_glyph,
       flops=_elementwise_flops(_cost), flops_doc=f"{_cost} per element")(_unary_rule(_name, _float))

for _name, (_symbol, _glyph, _bool) in BINARY.items():
    op(_name, "elementwise", doc=f"Elementwise `a {_symbol} b`, broadcasting by axis name.", arity=2,
       glyph=_glyph, flops=_elementwise_flops(1), flops_doc="1 per element")(_binary_rule(_name, _symbol, _bool))


@op("where", "elementwise", doc="`where(cond, a, b)`: `a` where `cond` is true, else `b`; broadcasts by name.",
    arity=3, glyph="?", flops=_elementwise_flops(1), flops_doc="1 per element")
def _where(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    c, a, b = (tensor(t, "where") for t in ins)
    if c.dtype != DType.bool:
        raise SpecError("E013", f"where(cond, a, b) needs a bool condition, got {c}")
    # the values' axes lead, so a mask never reorders the tensor it filters
    return TensorType(broadcast([a, b, c], sizes, "where"), promote(a.dtype, b.dtype))


@op("cast", "elementwise", doc="Convert to another dtype.", attrs={"dtype": DType}, arity=1, glyph="⇒")
def _cast(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    return tensor(ins[0], "cast").with_dtype(attrs["dtype"])


@op("dropout", "elementwise", doc="Zero elements with probability `p` while training (scaled by 1/(1-p)); "
    "identity in eval mode.", attrs={"p": float}, arity=1, glyph="D", flops=_elementwise_flops(1),
    flops_doc="1 per element")
def _dropout(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "dropout")
    need_float(x, "dropout")
    if not 0.0 <= attrs["p"] < 1.0:
        raise SpecError("E015", f"dropout probability must be in [0, 1), got {attrs['p']}")
    return x


@op("clamp", "elementwise", doc="Clamp into `[min, max]` (either bound may be absent).",
    attrs={"min": (int, float, type(None)), "max": (int, float, type(None))}, arity=1, glyph="⌈⌋",
    flops=_elementwise_flops(1), flops_doc="1 per element")
def _clamp(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "clamp")
    if x.dtype == DType.bool:
        raise SpecError("E013", f"clamp of a bool tensor {x}")
    lo, hi = attrs["min"], attrs["max"]
    if lo is None and hi is None:
        raise SpecError("E019", "clamp needs min, max or both")
    if lo is not None and hi is not None and lo > hi:
        raise SpecError("E015", f"clamp: min {lo} is greater than max {hi}")
    return x
