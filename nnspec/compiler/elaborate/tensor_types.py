"""Declared tensor types (`float32[B, T, n_embd]` for an input or output): reading one from the spec, comparing a
computed type with it, and showing a type in a message."""

from __future__ import annotations

import difflib
from typing import Any

import sympy

from nnspec.compiler.ir import DTYPE_ALIASES, Axis, TensorType, Type
from nnspec.compiler.sizes import MAX_SIZE, Sizes
from nnspec.errors import SpecError
from nnspec.spec import ast


def declared_type(t: ast.TypeExpr, sizes: Sizes, options: dict[str, Any]) -> TensorType:
    """The type a declaration names; an axis that is no declared dim becomes a free dim."""
    dtype = DTYPE_ALIASES.get(t.dtype)
    if dtype is None:
        hint = difflib.get_close_matches(t.dtype, list(DTYPE_ALIASES), n=1)
        raise SpecError("E004", f"unknown dtype '{t.dtype}'" + (f"; did you mean '{hint[0]}'?" if hint else
                        f"; dtypes are {', '.join(DTYPE_ALIASES)}"), t.dtype_span)
    axes: list[Axis] = []
    for item in t.axes:
        if isinstance(item, ast.AxisGroup | ast.AxisExpr):
            raise SpecError("E018", "a declared type lists single axes; groups and size expressions are for "
                            "annotations", item.span)
        if isinstance(item, ast.AxisInt):
            if not 1 <= item.value <= MAX_SIZE:
                raise SpecError("E023", f"axis size {item.value} is out of range (1 to "
                                f"2^{MAX_SIZE.bit_length() - 1})", item.span)
            axes.append(Axis(str(item.value), sympy.Integer(item.value)))
        else:
            if item.name.startswith("__"):  # a free dim becomes a name in generated code, like every name
                raise SpecError("E004", f"axis name '{item.name}' is reserved (it starts with __)", item.span)
            if item.name in options:
                raise SpecError("E026", f"'{item.name}' is an option, not a size", item.span)
            sym = sizes.lookup(item.name) or sizes.free_symbol(item.name)
            axes.append(Axis(item.name, sym))
        if [a.name for a in axes].count(axes[-1].name) > 1:
            raise SpecError("E017", f"axis '{axes[-1].name}' appears twice in this type", item.span)
    return TensorType(tuple(axes), dtype)


def same_type(a: Type, b: Type, sizes: Sizes) -> bool:
    """Declared output types bind by position and size, like a block signature: names may differ."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return a == b
    return a.dtype == b.dtype and a.rank == b.rank and all(
        sizes.equal(x, y) is not False for x, y in zip(a.sizes, b.sizes, strict=True))


def show(t: Type) -> str:
    if isinstance(t, tuple):
        return "(" + ", ".join(show(x) for x in t) + ")"
    return f"{t.dtype}[{', '.join(a.name if str(a.size) == a.name else f'{a.name}={a.size}' for a in t.axes)}]"
