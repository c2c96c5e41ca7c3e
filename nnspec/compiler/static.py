"""Compile-time values: arithmetic on sizes (sympy), numbers, booleans and strings.

This is nnspec's own evaluator; spec text is never passed to `eval`. Sizes stay symbolic (`4*n_embd`)
so reports and generated code read like the spec; their concrete values come from `Sizes`.
"""

from __future__ import annotations

import math
from typing import Any

import sympy

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
        raise SpecError("E026", "expected a number, got a function, tuple or tensor", span)
    return sympy.sympify(value)


def _checked(result: sympy.Basic, span: Span) -> sympy.Basic:
    if result.is_Number and result.is_finite and abs(result) > MAX_MAGNITUDE:
        raise SpecError("E023", f"value {result} is out of range (|x| > 2^62)", span)
    if result in (sympy.zoo, sympy.nan):
        raise SpecError("E026", "undefined value (division by zero?)", span)
    if result.is_number and result.is_extended_real is False:  # (-8)**0.5
        raise SpecError("E026", f"{result} is not a real number", span)
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
    return _checked(result, span)


def compare(op: str, a: Static, b: Static, span: Span) -> bool | sympy.Basic:
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
