"""A spec's dims and options get their values: each option from its default or the caller's override, each dim
from its number, its defining expression (dims may be defined by dims, in any order, without cycles) or an
override; an override naming no dim or option binds a free dim. `UsageError` is the caller's mistake here (a bad
command-line or API argument), as opposed to a `SpecError` in the spec text."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import sympy

from nnspec.compiler.elaborate.limits import MAX_DIM_DEPTH
from nnspec.compiler.elaborate.static_eval import CONSTANTS
from nnspec.compiler.sizes import MAX_SIZE, Sizes, symbol
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.load import DimDecl, OptionDecl, Spec
from nnspec.spec.source import Span


class UsageError(Exception):
    """A bad command-line or API argument (not a mistake in the spec text)."""


def bind_options(options: dict[str, OptionDecl], overrides: dict[str, Any]) -> dict[str, Any]:
    """Every option's value; the overrides used are removed from `overrides`."""
    values: dict[str, Any] = {}
    for name, decl in options.items():
        if decl.choices is not None and decl.default not in decl.choices:
            raise SpecError("E015", f"option '{name}' defaults to {decl.default!r}, which is not one of its "
                            f"choices {decl.choices}", decl.span)
        value = decl.default
        if name in overrides:
            value = overrides.pop(name)
            if isinstance(decl.default, bool) != isinstance(value, bool) or (
                    isinstance(decl.default, str) != isinstance(value, str)) or (
                    isinstance(decl.default, list) != isinstance(value, list)):
                raise UsageError(f"option {name} takes a value like {decl.default!r}, got {value!r}")
            if isinstance(decl.default, float) and isinstance(value, int):
                value = float(value)
            if decl.choices is not None and value not in decl.choices:
                raise UsageError(f"option {name} must be one of {decl.choices}, got {value!r}")
        values[name] = value
    return values


def bind_dims(dims: dict[str, DimDecl], overrides: dict[str, Any], sizes: Sizes,
              evaluate: Callable[[ast.Expr], Any]) -> None:
    """Give every declared dim its value in `sizes`; the overrides used are removed from `overrides`. `evaluate`
    is a dim expression's concrete static value (it may name only dims, options and constants)."""
    for name in dims:
        sizes.declared[name] = symbol(name)
    state: dict[str, str] = {}

    stack: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == "done":
            return
        decl = dims[name]
        if state.get(name) == "active":
            cycle = [*stack[stack.index(name):], name]
            first = dims[cycle[0]]
            raise SpecError("E020", f"dims form a cycle: {' -> '.join(cycle)}", first.span)
        if len(stack) >= MAX_DIM_DEPTH:  # each level is Python recursion
            raise SpecError("E005", f"dims depend on dims more than {MAX_DIM_DEPTH} deep "
                            f"({' -> '.join(stack[:3])} -> ... -> {name})", decl.span)
        state[name] = "active"
        stack.append(name)
        if name in overrides:
            value = overrides.pop(name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"dim {name} takes an integer, got {value!r}")
            _set_dim(sizes, name, value, decl.span)
        elif isinstance(decl.value, int):
            _set_dim(sizes, name, decl.value, decl.span)
        else:
            for ref in ast.names_in(decl.value):
                if ref.id in dims:
                    visit(ref.id)
            value = evaluate(decl.value)
            if isinstance(value, int) and not isinstance(value, bool):
                # a dim defined as an integer option's value (`height: image_height`, the option read from a
                # config list) evaluates to the option's Python int, not a sympy one
                value = sympy.Integer(value)
            if not isinstance(value, sympy.Basic) or not value.is_Number:
                raise SpecError("E026", f"dim '{name}' must be a number, got {value!r}", decl.span)
            if not value.is_Integer:
                raise SpecError("E014", _not_integer(name, decl.value, value, evaluate), decl.span)
            _set_dim(sizes, name, int(value), decl.span)
        state[name] = "done"
        stack.pop()

    # A cycle is reported at the first dim (in declaration order) that belongs to it.
    for name in dims:
        visit(name)


def _not_integer(name: str, expr: ast.Expr, value: sympy.Basic, evaluate: Callable[[ast.Expr], Any]) -> str:
    if isinstance(expr, ast.BinOp) and expr.op == "/":
        a = evaluate(expr.left)
        b = evaluate(expr.right)
        return (f"dim '{name}' is not an integer: {a} is not divisible by {b} ({a}/{b} = {float(value):g}); "
                "use // to round down")
    return f"dim '{name}' is not an integer: it evaluates to {value}"


def _set_dim(sizes: Sizes, name: str, value: int, span: Span) -> None:
    if not 1 <= value <= MAX_SIZE:
        raise SpecError("E023", f"dim '{name}' = {value} is out of range (1 to 2^{MAX_SIZE.bit_length() - 1})",
                        span)
    sizes.values[sizes.declared[name]] = sympy.Integer(value)


def bind_free(spec: Spec, sizes: Sizes, name: str, value: Any) -> None:
    """An override that names no dim or option: the value of a free dim (an axis size left to the inputs)."""
    known = [*spec.dims, *spec.options]
    if not name.isidentifier() or name in CONSTANTS:
        raise UsageError(f"cannot set {name!r}: not a name")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        hint = difflib.get_close_matches(name, known, n=1)
        raise UsageError(f"cannot set {name}={value!r}: not a dim or option of this spec"
                         + (f" (did you mean {hint[0]}?)" if hint else "") + ", and free dims take integers")
    sizes.values[sizes.free_symbol(name)] = sympy.Integer(value)
