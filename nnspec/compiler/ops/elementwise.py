"""Elementwise ops. Operands broadcast by axis *name*: equal names align, the rest pass through.

The result's axes are the first operand's, then each later operand's new axes in order.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy

from nnspec.compiler.ir import Axis, DType, TensorType, Type
from nnspec.compiler.ops.registry import Effect, find_axis, need_float, need_same_size, op, promote, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


@dataclass(frozen=True)
class Pointwise:
    """The meaning of one unary or binary elementwise op, in one row that every place computing it reads: the type
    rule and docs here, the constant folder (`scalar`), the reference interpreter and the torch emitter (`torch`,
    `torch_kwargs`, `infix`), and the Triton pointwise generator (`triton`)."""

    name: str
    formula: str                 # the docs' formula over x (unary); a binary op's symbol in `a SYMBOL b`
    glyph: str                   # how a circuit diagram draws it
    flops: int                   # per result element
    arity: int
    needs_float: bool = False    # refuses integer and bool operands
    returns_bool: bool = False   # a comparison or logical op
    no_bool: bool = False        # refuses bool operands (torch has no kernel for them)
    torch: str = ""              # the torch function computing it, by name (`torch.tanh`, `F.gelu`)
    torch_kwargs: tuple[tuple[str, Any], ...] = ()
    infix: str | None = None     # the Python operator torch tensors overload for it, if any
    takes_numbers: bool = False  # torch takes a Python number for an operand, so a scalar constant stays one
    scalar: Callable[..., Any] | None = None   # its meaning on Python numbers; raises where that is not torch's
    folds: frozenset[str] = frozenset()        # operand dtype kinds ("float", "int", "bool") it folds for
    triton: str | None = None    # a Triton expression over {x} / {a}, {b} in float32 (None: the generator's own rule)
    traits: tuple[str, ...] = ()


_NUM = frozenset({"float", "int"})
_ALL = frozenset({"float", "int", "bool"})
_SQRT_1_2 = 0.7071067811865476


def _logical_and(a: Any, b: Any) -> Any:
    return a and b


def _logical_or(a: Any, b: Any) -> Any:
    return a or b


def _integral(fn: Callable[[float], int]) -> Callable[[Any], Any]:
    """floor/round on Python numbers as torch computes them: an integer is its own value; a float stays a float
    carrying x's sign when the result is zero (torch's round(-0.25) is -0.0). Infinities and NaN raise (Python's
    int conversion refuses them), so the folder leaves them alone."""
    def scalar(x: Any) -> Any:
        return x if isinstance(x, int) else math.copysign(float(fn(x)), x)
    return scalar


def _sign(x: Any) -> Any:
    """torch.sign: -1, 0 or 1 in x's type; 0 for NaN and for both zeros."""
    s = (x > 0) - (x < 0)
    return float(s) if isinstance(x, float) else s


def _identity(x: Any) -> Any:
    return x


def _extremum(pick: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Python's max/min, refusing (ValueError) the float cases it does not settle as torch does: a NaN operand
    (torch propagates it; Python's answer depends on the order) and two zeros (either sign may come back)."""
    def scalar(a: Any, b: Any) -> Any:
        if isinstance(a, float) and (math.isnan(a) or math.isnan(b) or a == b == 0):
            raise ValueError("NaN propagation and the sign of zero are the backend's business")
        return pick(a, b)
    return scalar


POINTWISE: dict[str, Pointwise] = {p.name: p for p in [
    # unary
    Pointwise("neg", "-x", "−", 1, 1, torch="torch.neg", infix="-", scalar=operator.neg, folds=_NUM,
              triton="-{x}", traits=("epilogue",)),
    Pointwise("abs", "|x|", "|·|", 1, 1, no_bool=True, torch="torch.abs", scalar=abs, folds=_NUM,
              triton="tl.abs({x})", traits=("epilogue",)),
    Pointwise("relu", "max(x, 0)", "ReLU", 1, 1, True, torch="F.relu", triton="tl.where({x} > 0, {x}, 0.0)",
              traits=("activation", "epilogue")),
    Pointwise("gelu", "x Φ(x) (exact, erf)", "GELU", 8, 1, True, torch="F.gelu",
              triton=f"0.5 * {{x}} * (1.0 + tl.erf({{x}} * {_SQRT_1_2}))", traits=("activation", "epilogue")),
    Pointwise("gelu_tanh", "0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))", "GELU~", 8, 1, True, torch="F.gelu",
              torch_kwargs=(("approximate", "tanh"),), traits=("activation", "epilogue")),
    Pointwise("silu", "x σ(x)", "SiLU", 4, 1, True, torch="F.silu", triton="{x} * tl.sigmoid({x})",
              traits=("activation", "epilogue")),
    Pointwise("sigmoid", "1 / (1 + e^-x)", "σ", 4, 1, True, torch="torch.sigmoid", triton="tl.sigmoid({x})",
              traits=("activation", "epilogue")),
    # tanh is libdevice-only in some Triton releases; 2 sigmoid(2x) - 1 is in every one
    Pointwise("tanh", "tanh x", "tanh", 4, 1, True, torch="torch.tanh",
              triton="(2.0 * tl.sigmoid(2.0 * {x}) - 1.0)", traits=("activation", "epilogue")),
    Pointwise("exp", "e^x", "exp", 1, 1, True, torch="torch.exp", triton="tl.exp({x})"),
    Pointwise("log", "ln x", "log", 1, 1, True, torch="torch.log", triton="tl.log({x})"),
    Pointwise("sqrt", "√x", "√", 1, 1, True, torch="torch.sqrt", scalar=math.sqrt, folds=frozenset({"float"}),
              triton="tl.sqrt({x})"),
    Pointwise("rsqrt", "1/√x", "1/√", 1, 1, True, torch="torch.rsqrt", triton="tl.rsqrt({x})"),
    # torch's threshold: above 20 the result is x itself (log1p(e^x) rounds to x there in float32)
    Pointwise("softplus", "ln(1 + e^x) (x itself above 20)", "Softplus", 4, 1, True, torch="F.softplus",
              traits=("activation", "epilogue")),
    Pointwise("log1p", "ln(1 + x), accurate near 0", "log1p", 1, 1, True, torch="torch.log1p"),
    Pointwise("expm1", "e^x - 1, accurate near 0", "expm1", 1, 1, True, torch="torch.expm1"),
    Pointwise("sin", "sin x", "sin", 1, 1, True, torch="torch.sin", triton="tl.sin({x})"),
    Pointwise("cos", "cos x", "cos", 1, 1, True, torch="torch.cos", triton="tl.cos({x})"),
    Pointwise("round", "x rounded to the nearest integer, halves to even", "⌊·⌉", 1, 1, no_bool=True,
              torch="torch.round", scalar=_integral(round), folds=_NUM),
    Pointwise("floor", "⌊x⌋", "⌊·⌋", 1, 1, no_bool=True, torch="torch.floor", scalar=_integral(math.floor),
              folds=_NUM),
    Pointwise("sign", "-1, 0 or 1 as x < 0, x = 0 (or NaN), x > 0", "sgn", 1, 1, no_bool=True, torch="torch.sign",
              scalar=_sign, folds=_NUM),
    # the value unchanged; autograd records nothing through it (its gradient is zero)
    Pointwise("stop_gradient", "x, passing no gradient back (detach)", "∅∇", 0, 1, torch="torch.detach",
              scalar=_identity, folds=_ALL, triton="{x}"),
    Pointwise("logical_not", "not x (bool)", "¬", 1, 1, torch="torch.logical_not", infix="~",
              scalar=operator.not_, folds=_ALL, triton="({x} == 0)"),
    # binary
    Pointwise("add", "+", "+", 1, 2, torch="torch.add", infix="+", takes_numbers=True, scalar=operator.add,
              folds=_NUM, triton="{a} + {b}", traits=("commutative", "epilogue")),
    Pointwise("sub", "-", "−", 1, 2, torch="torch.sub", infix="-", takes_numbers=True, scalar=operator.sub,
              folds=_NUM, triton="{a} - {b}", traits=("epilogue",)),
    Pointwise("mul", "*", "×", 1, 2, torch="torch.mul", infix="*", takes_numbers=True, scalar=operator.mul,
              folds=_NUM, triton="{a} * {b}", traits=("commutative", "epilogue")),
    Pointwise("div", "/", "÷", 1, 2, torch="torch.div", infix="/", takes_numbers=True,
              scalar=operator.truediv, folds=frozenset({"float"}), traits=("epilogue",)),
    Pointwise("floordiv", "//", "÷⌊⌋", 1, 2, torch="torch.div", torch_kwargs=(("rounding_mode", "floor"),),
              infix="//", takes_numbers=True, scalar=operator.floordiv, folds=frozenset({"int"})),
    Pointwise("mod", "%", "mod", 1, 2, torch="torch.remainder", infix="%", takes_numbers=True,
              scalar=operator.mod, folds=frozenset({"int"})),
    Pointwise("pow", "**", "^", 1, 2, torch="torch.pow", infix="**", takes_numbers=True),
    Pointwise("maximum", "max", "max", 1, 2, torch="torch.maximum", scalar=_extremum(max), folds=_NUM,
              traits=("commutative",)),
    Pointwise("minimum", "min", "min", 1, 2, torch="torch.minimum", scalar=_extremum(min), folds=_NUM,
              traits=("commutative",)),
    Pointwise("eq", "==", "=", 1, 2, returns_bool=True, torch="torch.eq", infix="==", takes_numbers=True,
              scalar=operator.eq, folds=_ALL, triton="{a} == {b}", traits=("commutative",)),
    Pointwise("ne", "!=", "≠", 1, 2, returns_bool=True, torch="torch.ne", infix="!=", takes_numbers=True,
              scalar=operator.ne, folds=_ALL, triton="{a} != {b}", traits=("commutative",)),
    Pointwise("lt", "<", "<", 1, 2, returns_bool=True, torch="torch.lt", infix="<", takes_numbers=True,
              scalar=operator.lt, folds=_ALL, triton="{a} < {b}"),
    Pointwise("le", "<=", "≤", 1, 2, returns_bool=True, torch="torch.le", infix="<=", takes_numbers=True,
              scalar=operator.le, folds=_ALL, triton="{a} <= {b}"),
    Pointwise("gt", ">", ">", 1, 2, returns_bool=True, torch="torch.gt", infix=">", takes_numbers=True,
              scalar=operator.gt, folds=_ALL, triton="{a} > {b}"),
    Pointwise("ge", ">=", "≥", 1, 2, returns_bool=True, torch="torch.ge", infix=">=", takes_numbers=True,
              scalar=operator.ge, folds=_ALL, triton="{a} >= {b}"),
    Pointwise("logical_and", "and", "∧", 1, 2, returns_bool=True, torch="torch.logical_and", infix="&",
              scalar=_logical_and, folds=_ALL, triton="{a} & {b}", traits=("commutative",)),
    Pointwise("logical_or", "or", "∨", 1, 2, returns_bool=True, torch="torch.logical_or", infix="|",
              scalar=_logical_or, folds=_ALL, triton="{a} | {b}", traits=("commutative",)),
]}
UNARY = {name: p for name, p in POINTWISE.items() if p.arity == 1}
BINARY = {name: p for name, p in POINTWISE.items() if p.arity == 2}


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
        if UNARY[name].no_bool and x.dtype == DType.bool:
            raise SpecError("E013", f"{name} of a bool tensor {x}; cast it first")
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


for _p in UNARY.values():
    op(_p.name, "elementwise", doc=f"Elementwise `{_p.formula}`.", arity=1, glyph=_p.glyph,
       flops=_elementwise_flops(_p.flops), flops_doc=f"{_p.flops} per element",
       traits=("pointwise", *_p.traits))(_unary_rule(_p.name, _p.needs_float))

for _p in BINARY.values():
    op(_p.name, "elementwise", doc=f"Elementwise `a {_p.formula} b`, broadcasting by axis name.", arity=2,
       glyph=_p.glyph, flops=_elementwise_flops(_p.flops), flops_doc=f"{_p.flops} per element",
       traits=("pointwise", *_p.traits))(_binary_rule(_p.name, _p.formula, _p.returns_bool))


@op("where", "elementwise", doc="`where(cond, a, b)`: `a` where `cond` is true, else `b`; broadcasts by name.",
    arity=3, glyph="?", flops=_elementwise_flops(1), flops_doc="1 per element", traits=("pointwise",))
def _where(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    c, a, b = (tensor(t, "where") for t in ins)
    if c.dtype != DType.bool:
        raise SpecError("E013", f"where(cond, a, b) needs a bool condition, got {c}")
    # the values' axes lead, so a mask never reorders the tensor it filters
    return TensorType(broadcast([a, b, c], sizes, "where"), promote(a.dtype, b.dtype))


@op("cast", "elementwise", doc="Convert to another dtype.", attrs={"dtype": DType}, arity=1, glyph="⇒",
    traits=("pointwise", "epilogue"))
def _cast(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    return tensor(ins[0], "cast").with_dtype(attrs["dtype"])


@op("dropout", "elementwise", doc="Zero elements with probability `p` while training (scaled by 1/(1-p)); "
    "identity in eval mode.", attrs={"p": float}, arity=1, glyph="D", flops=_elementwise_flops(1),
    flops_doc="1 per element", effect=Effect.RANDOM, traits=("pointwise", "epilogue"))
def _dropout(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "dropout")
    need_float(x, "dropout")
    if not 0.0 <= attrs["p"] < 1.0:
        raise SpecError("E015", f"dropout probability must be in [0, 1), got {attrs['p']}")
    return x


@op("drop_path", "elementwise", doc="Stochastic depth (Huang et al. 2016): while training, each index along axis "
    "`axis` (each sample) keeps its whole slice with probability 1-p, scaled by 1/(1-p), or zeroes it; identity in "
    "eval mode.", attrs={"p": float, "axis": str}, arity=1, glyph="DropPath", flops=_elementwise_flops(1),
    flops_doc="1 per element", effect=Effect.RANDOM)
def _drop_path(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "drop_path")
    need_float(x, "drop_path")
    find_axis(x, attrs["axis"], "drop_path")
    if not 0.0 <= attrs["p"] < 1.0:
        raise SpecError("E015", f"drop_path probability must be in [0, 1), got {attrs['p']}")
    return x


# Pointwise, but not a row of POINTWISE: torch has no one function computing it (its lowering spells it out).
@op("straight_through", "elementwise", doc="`straight_through(x, y)`: the value of `y` with the gradient of `x` "
    "(a straight-through estimator), computed as `x + (y - x)` with the difference detached; broadcasts by name.",
    arity=2, glyph="STE", flops=_elementwise_flops(2), flops_doc="2 per element", traits=("pointwise",))
def _straight_through(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x, y = (tensor(t, "straight_through") for t in ins)
    need_float(x, "straight_through (the value gradients flow to)")
    need_float(y, "straight_through (the value passed forward)")
    return TensorType(broadcast([x, y], sizes, "straight_through"), promote(x.dtype, y.dtype))


@op("clamp", "elementwise", doc="Clamp into `[min, max]` (either bound may be absent).",
    attrs={"min": (int, float, type(None)), "max": (int, float, type(None))}, arity=1, glyph="⌈⌋",
    flops=_elementwise_flops(1), flops_doc="1 per element", traits=("pointwise", "epilogue"))
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
