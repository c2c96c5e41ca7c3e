"""Compile-time values: arithmetic on sizes (sympy), numbers, booleans and strings.

This is nnspec's own evaluator; spec text is never passed to `eval`. Sizes stay symbolic (`4*n_embd`)
so reports and generated code read like the spec; their concrete values come from `Sizes`.
"""

from __future__ import annotations

import math
from typing import Any

import sympy

from nnspec.compiler.ir import DType
from nnspec.errors import SpecError
from nnspec.spec.source import Span

Static = bool | int | float | str | sympy.Basic

MAX_MAGNITUDE = 1 << 62  # beyond this an int is no size or count anyone means


def is_static(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str, sympy.Basic))


def to_sym(value: Static, span: Span) -> sympy.Expr:
    if isinstance(value, (bool, str)):
        raise SpecError("E026", f"expected a number, got {value!r}", span)
    if isinstance(value, float):
        return sympy.Float(value) if math.isfinite(value) else (sympy.oo if value > 0 else -sympy.oo)
    if not isinstance(value, (int, sympy.Basic)):  # a function, a tuple, a tensor: never sympify()'d
        raise SpecError("E026", "expected a number, got a function, tuple, list or tensor", span)
    return sympy.sympify(value)


def checked(result: sympy.Basic, span: Span, concrete: Any = None) -> sympy.Basic:
    """`result` of static arithmetic or a function (sqrt, log, exp, ...), refused where it leaves the real numbers
    a spec means: undefined (1/0, log(0)), imaginary (sqrt(-1), log(-1)) or beyond 2^62 (exp(1000)). With
    `concrete` (the known dims substituted), `log(d - 8)` is judged by its value; the symbolic result is kept."""
    value = concrete(result) if concrete is not None else result
    if value in (sympy.zoo, sympy.nan) or (value.is_number and value.has(sympy.zoo, sympy.nan)):
        raise SpecError("E026", "undefined value (a division by zero, log(0) or 0/0)", span)
    if value.is_number and value.is_extended_real is False:  # (-8)**0.5
        raise SpecError("E026", f"{value} is not a real number", span)
    if value.is_number and value.is_finite and abs(value) > MAX_MAGNITUDE:  # exp(1000) is no sympy Number
        raise SpecError("E023", f"value {value} is out of range (|x| > 2^62)", span)
    return result


def binop(op: str, a: Static, b: Static, span: Span, concrete: Any) -> Static:
    """Static `a op b`. `concrete` maps a sympy expression to its value with the known dims substituted."""
    if isinstance(a, str) or isinstance(b, str):
        raise SpecError("E026", f"'{op}' does not apply to text ({a!r} {op} {b!r})", span)
    if isinstance(a, bool) or isinstance(b, bool):
        raise SpecError("E026", f"'{op}' does not apply to true/false", span)
    x, y = to_sym(a, span), to_sym(b, span)
    if op in ("/", "//", "%") and concrete(y) == 0:
        raise SpecError("E026", f"division by zero: {a} {op} {b}", span)
    if op == "+":
        result = x + y
    elif op == "-":
        result = x - y
    elif op == "*":
        result = x * y
    elif op == "/":
        result = x / y
    elif op == "//":
        result = sympy.floor(x / y)
    elif op == "%":
        result = sympy.Mod(x, y)
    elif op == "**":
        cy = concrete(y)
        if cy.is_Number and abs(cy) > 64:
            raise SpecError("E023", f"exponent {cy} is out of range", span)
        result = x ** y
    else:
        raise SpecError("E026", f"'{op}' does not apply to sizes", span)
    return checked(result, span, concrete)


def float_op(op: str, x: float, y: float) -> float:
    """`x op y` in Python floats: arithmetic on a static float (`0.5 * d` meeting no tensor) stays a float."""
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "/":
        return x / y
    if op == "**":
        return float(x ** y)
    if op == "//":
        return float(x // y)
    if op == "%":
        return x % y
    raise ValueError(op)


STATIC_FUNCS = {"sqrt", "min", "max", "abs", "log", "exp", "int"}


def static_call(name: str, args: list[Any], span: Span, concrete: Any = None) -> Any:
    nums = [to_sym(a, span) for a in args]
    if name in ("min", "max"):
        if len(nums) < 2:
            raise SpecError("E019", f"{name} takes at least two values", span)
        return (sympy.Min if name == "min" else sympy.Max)(*nums)
    if len(nums) != 1:
        raise SpecError("E019", f"{name} takes one value, got {len(nums)}", span)
    if name == "int":
        return to_int(nums[0], span, concrete)
    fn = {"sqrt": sympy.sqrt, "abs": sympy.Abs, "log": sympy.log, "exp": sympy.exp}[name]
    return checked(fn(nums[0]), span, concrete)  # sqrt(-1), log(0), exp(1000): refused where written


def to_int(x: sympy.Expr, span: Span, concrete: Any = None) -> sympy.Expr:
    """`int(x)`: a number (a float option times a size, `int(mlp_ratio * d)`) truncated toward zero, as Python's
    `int` and Hugging Face's configs do; the only way a float becomes a size, so a fraction is never silent."""
    value = concrete(x) if concrete is not None else x
    if value.is_number:
        if not value.is_finite:
            raise SpecError("E023", f"int({value}): not a finite number", span)
        return sympy.Integer(int(value))
    if value.is_integer:
        return x
    raise SpecError("E026", f"int({x}) depends on a free dim; a fraction of a run-time size cannot be a size", span)


def compare(op: str, a: Static, b: Static, span: Span) -> bool | sympy.Basic:
    if op == "in":
        return member(a, b, span)
    if isinstance(a, str) or isinstance(b, str):
        if op not in ("==", "!="):
            raise SpecError("E026", f"'{op}' does not compare text", span)
        return (a == b) == (op == "==")
    x, y = to_sym(a, span), to_sym(b, span)
    rel = {"==": sympy.Eq, "!=": sympy.Ne, "<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge}[op]
    result = rel(x, y)
    if result is sympy.true:
        return True
    if result is sympy.false:
        return False
    return result


def member(item: Static, values: Any, span: Span) -> bool:
    """`item in values`: whether a list option (`i in mlp_only_layers`) holds `item`, both concrete."""
    if not isinstance(values, list):
        raise SpecError("E026", f"'in' needs a list option on its right, got {values!r}", span)
    return any(compare("==", item, v, span) is True for v in values if isinstance(v, str) == isinstance(item, str))


def list_item(values: list[Any], index: Static, span: Span) -> Any:
    """`values[index]`: an entry of a list option (`layer_types[i]`), counted from 0."""
    if isinstance(index, bool) or not isinstance(index, (int, sympy.Integer)):
        raise SpecError("E026", f"a list is indexed by an integer known when the spec is checked, got {index!r}",
                        span)
    if not 0 <= int(index) < len(values):
        raise SpecError("E019", f"index {index} is out of range for a list of {len(values)} "
                        f"(0 to {len(values) - 1})" if values else f"index {index} is out of range for an empty list",
                        span)
    return values[int(index)]


def python_value(value: Static) -> bool | int | float | str:
    """A fully concrete static value as a plain Python value."""
    if isinstance(value, sympy.Basic):
        if value.is_Integer:
            return int(value)
        if value.is_number or value in (sympy.oo, -sympy.oo):  # includes irrationals like 4*sqrt(2)
            return float(value)
        if value is sympy.true or value is sympy.false:
            return bool(value)
        raise ValueError(f"{value} is not concrete")
    return value


DTYPE_LIMITS: dict[DType, float] = {DType.int32: 2 ** 31, DType.int64: 2 ** 63, DType.float16: 65504.0,
                                    DType.bfloat16: 3.3895313892515355e38, DType.float32: 3.4028234663852886e38}


def fits_dtype(value: bool | int | float, dtype: DType) -> bool:
    """Whether a constant is representable in `dtype` (infinities and NaN are, in a float dtype)."""
    if dtype == DType.bool or isinstance(value, bool):
        return True
    if dtype.is_int:
        return float(value).is_integer() and -DTYPE_LIMITS[dtype] <= value < DTYPE_LIMITS[dtype]
    return not math.isfinite(value) or abs(value) <= DTYPE_LIMITS[dtype]
