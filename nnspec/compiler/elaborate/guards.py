"""Run-time guards: facts about sizes that depend on free dims (batch, sequence) and so cannot be decided when the
spec is checked. They come from `require:` lines and from shape rules (`Sizes.assume`); each is kept once, in
integer arithmetic every backend can write as code, located where the spec asked for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy

from nnspec.compiler.ir import Guard
from nnspec.compiler.sizes import Sizes, expand
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.source import Span

_GUARD_NODES = (sympy.Symbol, sympy.Integer, sympy.Rational, sympy.Add, sympy.Mul, sympy.Pow, sympy.Mod, sympy.floor,
                sympy.Min, sympy.Max, sympy.core.relational.Relational, sympy.And, sympy.Or, sympy.Not,
                sympy.logic.boolalg.BooleanAtom)


def check_requirement(expr: ast.Expr, span: Span, evaluate: Callable[[ast.Expr], Any],
                      concrete: Callable[[Any], Any]) -> Guard | None:
    """A `require:` line: None when it holds, the guard to keep when it depends on free dims, an error when it
    fails or is no condition. `evaluate` is an expression's static value (free dims allowed)."""
    value = evaluate(expr)
    if value is True or value is sympy.true:
        return None
    if value is False or value is sympy.false:
        raise SpecError("E015", f"requirement '{_text(span)}' does not hold{_explain(expr, evaluate, concrete)}", span)
    # a condition on free dims, kept for run time; a size (`K + N`, even a bare `K`: a sympy Symbol is also a
    # Boolean) is no condition
    condition = (sympy.core.relational.Relational, sympy.logic.boolalg.BooleanFunction)
    if isinstance(value, condition) and value.free_symbols:
        return Guard(_guard_form(value, span), _text(span), span)
    raise SpecError("E026", f"requirement '{_text(span)}' is not a condition (it evaluates to {value})", span)


def add_guard(guards: list[Guard], sizes: Sizes, guard: Guard) -> None:
    """Keep one guard per fact: `K == N` and `N == K` are the same check, and so are `H % window == 0` and
    `H % wh == 0` where the dim wh is window (facts are compared with the declared dims' values)."""
    fact = sizes.concrete(guard.expr)
    if fact is sympy.true:  # `T % T == 0` holds for every size: no check to run (nor to generate)
        return
    if fact is sympy.false:
        raise SpecError("E012", f"sizes can never agree: {guard.text}", guard.span)
    key = _canonical(fact)
    if isinstance(guards, GuardList):
        if key not in guards.keys:
            guards.keys.add(key)
            guards.append(guard)
    elif all(_canonical(sizes.concrete(g.expr)) != key for g in guards):
        guards.append(guard)


class GuardList(list[Guard]):
    """The guards kept so far with the canonical form of each (`keys`): adding one is a set lookup, not a pass over
    every kept guard (a 1 MiB spec can hold 60k guards; comparing each with all took minutes)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set[sympy.Basic] = set()


def _explain(expr: ast.Expr, evaluate: Callable[[ast.Expr], Any], concrete: Callable[[Any], Any]) -> str:
    if isinstance(expr, ast.Compare):
        a = concrete(evaluate(expr.left))
        b = concrete(evaluate(expr.right))
        return f": {a} {expr.op} {b} is false"
    return ""


def _text(span: Span) -> str:
    line = span.source.line_text(span.line) or ""
    end = span.end_col - 1 if span.end_line == span.line else len(line)
    return line[span.col - 1:end].strip()


def _guard_form(fact: sympy.Basic, span: Span) -> sympy.Basic:
    """A requirement kept for run time, in integer arithmetic on sizes (`+ - * / // % **`, min, max, comparisons,
    and/or/not), which every backend can write as code. A float that is an integer (`0.0`) becomes one."""
    floats = {f: sympy.Integer(int(f)) for f in fact.atoms(sympy.Float) if float(f).is_integer()}
    fact = fact.xreplace(floats) if floats else fact
    for node in sympy.preorder_traversal(fact):
        bad = not isinstance(node, _GUARD_NODES) or (isinstance(node, sympy.Pow) and not node.exp.is_Integer)
        if bad:
            raise SpecError("E026", f"a requirement checked at run time may use only integer arithmetic on sizes "
                            f"(+ - * / // % **, min, max); {node} is not", span)
    return fact


def _canonical(fact: sympy.Basic) -> sympy.Basic:
    if isinstance(fact, sympy.Eq):
        diff = expand(fact.lhs - fact.rhs)
        return -diff if diff.could_extract_minus_sign() else diff
    return fact
