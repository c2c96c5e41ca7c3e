"""Evaluating a spec expression that must be known when the spec is checked: a dim's definition, a `require:`
line, a block parameter's default. Names resolve through a lookup the caller gives (dims, options, constants, and
where allowed free dims); the arithmetic itself is `compiler/static.py`'s."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

import sympy

from nnspec.compiler import static
from nnspec.compiler.elaborate.values import kind_of
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.source import Span

CONSTANTS: dict[str, Any] = {"true": True, "false": False, "inf": math.inf, "pi": math.pi}

Lookup = Callable[[str, Span], Any]   # a name's static value, or a raised E011


def evaluate(expr: ast.Expr, lookup: Lookup, concrete: Callable[[Any], Any]) -> Any:
    """`expr`'s static value; `concrete` maps a sympy expression to its value with the known dims substituted."""
    if isinstance(expr, ast.Num):
        return number_literal(expr)
    if isinstance(expr, ast.Str):
        return expr.value
    if isinstance(expr, ast.Name):
        return lookup(expr.id, expr.span)
    if isinstance(expr, ast.BinOp):
        a = evaluate(expr.left, lookup, concrete)
        b = evaluate(expr.right, lookup, concrete)
        return static.binop(expr.op, a, b, expr.span, concrete)
    if isinstance(expr, ast.Unary):
        v = evaluate(expr.operand, lookup, concrete)
        return v if expr.op == "+" else static.binop("*", -1, v, expr.span, concrete)
    if isinstance(expr, ast.Compare):
        a = evaluate(expr.left, lookup, concrete)
        b = evaluate(expr.right, lookup, concrete)
        return static.compare(expr.op, _concrete(a, concrete), _concrete(b, concrete), expr.span)
    if isinstance(expr, ast.Annotate) and len(expr.axes) == 1 and isinstance(expr.axes[0], ast.AxisInt):
        values = evaluate(expr.value, lookup, concrete)   # `depths[0]`: an entry of a list option
        if isinstance(values, list):
            return static.list_item(values, expr.axes[0].value, expr.span)
    if isinstance(expr, ast.BoolOp):
        a = _condition(evaluate(expr.left, lookup, concrete), expr.op, expr.left.span)
        b = _condition(evaluate(expr.right, lookup, concrete), expr.op, expr.right.span)
        return sympy.And(a, b) if expr.op == "and" else sympy.Or(a, b)
    if isinstance(expr, ast.Not):
        return sympy.Not(_condition(evaluate(expr.operand, lookup, concrete), "not", expr.operand.span))
    if isinstance(expr, ast.Ternary):
        cond = evaluate(expr.cond, lookup, concrete)
        if not isinstance(cond, bool):
            raise SpecError("E026", "condition must be known when the spec is checked", expr.cond.span)
        return evaluate(expr.then if cond else expr.orelse, lookup, concrete)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in static.STATIC_FUNCS \
            and not expr.kwargs:
        args = [evaluate(a, lookup, concrete) for a in expr.args]
        return static.static_call(expr.func.id, args, expr.span, concrete)
    raise SpecError("E026", "only arithmetic on dims and options is allowed here", expr.span)


def _concrete(v: Any, concrete: Callable[[Any], Any]) -> Any:
    return concrete(v) if isinstance(v, sympy.Basic) else v


def number_literal(e: ast.Num) -> Any:
    """A number literal: an exact integer (within +-2^62) or a float."""
    if isinstance(e.value, int):
        if e.value > static.MAX_MAGNITUDE:
            raise SpecError("E023", f"integer {e.value} is out of range (|x| > 2^62)", e.span)
        return sympy.Integer(e.value)
    return e.value


def _condition(value: Any, op: str, span: Span) -> Any:
    """An operand of `and`, `or`, `not` in static arithmetic: true/false or a comparison, never a size."""
    if isinstance(value, (bool, sympy.logic.boolalg.BooleanAtom, sympy.logic.boolalg.BooleanFunction,
                          sympy.core.relational.Relational)):  # not just Boolean: a sympy Symbol is one too
        return value
    raise SpecError("E026", f"'{op}' takes true/false or comparisons, got {kind_of(value)}", span)


def undefined(name: str, span: Span, candidates: list[str], *, size: bool = False) -> SpecError:
    """E011 for `name`. Where a size is expected (`size`), a new name is most often a dim not declared yet, so
    the message says how to declare it, and a similar name comes second, as a possible typo."""
    hint = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not size:
        return SpecError("E011", f"undefined name '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else ""), span)
    err = SpecError("E011", f"undefined dim '{name}': declare it under `dims:` (`{name}: 64`, or an expression "
                    "over other dims)", span)
    return err.with_note(f"if '{name}' is a typo: did you mean '{hint[0]}'?") if hint else err
