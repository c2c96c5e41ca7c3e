"""A block call's signature, bound afresh for each call: its annotations' axis names and its size parameters are
names of the block, not of the caller. `Signature` binds them from the arguments (checking that a name used twice
means one size) and remembers, for each, the caller's name for the same thing, so the block's results can be shown
to the caller in the caller's own names (`caller_axes`)."""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.elaborate.nodes import NodeBuilder
from nnspec.compiler.elaborate.values import TensorValue
from nnspec.compiler.elaborate.views import SizeOf, expr_text, size_expr, view
from nnspec.compiler.ir import Axis, TensorType
from nnspec.compiler.sizes import MAX_SIZE, Sizes
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.source import Span


class Signature:
    """The names one call of a block binds. `library`: the block comes from an included file, so the including
    spec's dims mean nothing in its signature (in a spec's own block, a dim named in an annotation is checked)."""

    def __init__(self, caller: NodeBuilder, library: bool) -> None:
        self.caller = caller
        self.library = library
        self.sizes: dict[str, sympy.Expr] = {}   # a name the signature bound -> its size in this call
        self.to_caller: dict[str, str] = {}      # a name the signature bound -> the caller's name for it
        self.solved: dict[str, sympy.Expr] = {}  # names only a size expression gives (`x[B, (2 * d)]`): sizes

    def size_of(self, name: str, span: Span) -> sympy.Expr | None:
        """The size `name` already has in this signature (a parameter, or an axis of an earlier argument), a dim
        in a spec's own block, or None: a new name, bound by the argument."""
        size = self.sizes.get(name)
        if size is None and not self.library:
            size = self.caller.sizes.declared.get(name)
        if size is not None:
            c = self.caller.sizes.concrete(size)
            if c.is_number and (not c.is_Integer or not 1 <= c <= MAX_SIZE):
                raise SpecError("E023", f"'{name}' is {c}, which is not a size (an integer from 1 to "
                                f"2^{MAX_SIZE.bit_length() - 1})", span)
        return size

    def _split_size_of(self, items: list[ast.AxisItem]) -> SizeOf:
        """`size_of`, where a free dim named in a group (`x[(B T), d]`) is the model's: a split needs its factors'
        sizes, and only a single axis can bind a name from the argument."""
        grouped = {a.name for i in items if isinstance(i, ast.AxisGroup) for a in i.items
                   if isinstance(a, ast.AxisName)}

        def size_of(name: str, span: Span) -> sympy.Expr | None:
            size = self.size_of(name, span)
            if size is None and name in grouped:
                return self.caller.sizes.free.get(name)
            return size
        return size_of

    def bind_tensor(self, value: TensorValue, items: list[ast.AxisItem] | None, span: Span) -> TensorValue:
        """The argument as the block sees it: viewed under the parameter's annotation (if any), in the caller's
        graph but outside the caller's name table; its axis names are bound for the rest of the signature."""
        b = self.caller
        t = b.type_of(value)
        if items is not None and len(items) == t.rank:
            for item, axis in zip(items, t.axes, strict=True):
                if isinstance(item, ast.AxisExpr):
                    self._solve(item, axis, span)
        if items is not None:
            rearrange = view(t, items, span, b.sizes, self._split_size_of(items), b._take_guards)
            if rearrange is not None:
                perm, axes = rearrange
                value = b.emit("rearrange", [value.node], {"perm": perm, "axes": axes}, span,
                               hint=b.graph[value.node].name, record=False)
        for local, caller in _renames(t, items).items():
            self.to_caller.setdefault(local, caller)
        for a in b.type_of(value).axes:
            seen = self.sizes.setdefault(a.name, a.size)
            if b.sizes.equal(seen, a.size) is False:
                raise SpecError("E012", f"axis '{a.name}' has size {b.sizes.describe(a.size)} here but "
                                f"{b.sizes.describe(seen)} in an earlier argument of this call", span)
        return value

    def _solve(self, item: ast.AxisExpr, axis: Axis, span: Span) -> None:
        """`x[B, (2 * d)]` with `d` not yet known: `d` is the size that makes the expression the axis's size."""
        sizes = self.caller.sizes
        names = list(dict.fromkeys(n.id for n in ast.names_in(item.expr)))
        unknown = [n for n in names if self.size_of(n, item.span) is None]
        if not unknown:
            return
        if len(unknown) > 1:
            raise SpecError("E018", f"cannot infer both {' and '.join(unknown)} from one axis "
                            f"({expr_text(item.expr)}); give all but one a size", span)
        x = sympy.Symbol("__unknown", positive=True)
        value = size_expr(item, sizes, self.size_of, {unknown[0]: x})
        solutions = sympy.solve(sympy.Eq(value, axis.size), x)
        if len(solutions) != 1:
            raise SpecError("E018", f"cannot infer {unknown[0]} from ({expr_text(item.expr)}) = "
                            f"{sizes.describe(axis.size)}", span)
        size = sympy.sympify(solutions[0])
        c = sizes.concrete(size)
        if not (c.is_Integer and 1 <= c <= MAX_SIZE) and not (not c.is_number and size.is_integer):
            raise SpecError("E014", f"axis {axis.name} has size {sizes.describe(axis.size)}, which is not "
                            f"({expr_text(item.expr)}) for any size {unknown[0]} ({unknown[0]} = {c})", span)
        self.sizes[unknown[0]] = size
        self.solved[unknown[0]] = size
        self.to_caller[unknown[0]] = str(size)

    def bind_value(self, name: str, value: Any, arg: ast.Expr | None, span: Span) -> None:
        """A size parameter: inside the block an axis it sizes is named after it; the caller calls that axis what
        it wrote (`mlp(x, hidden)`), or its size (`mlp(x, 4 * d)` -> `4*d`), as it would name a size itself."""
        if not isinstance(value, sympy.Expr):   # a flag, a number, a string: no axis is named after it
            return
        seen = self.sizes.get(name)
        if seen is not None and self.caller.sizes.equal(seen, value) is False:
            raise SpecError("E012", f"'{name}' is {self.caller.sizes.describe(value)}, but an earlier argument of "
                            f"this call has axis '{name}' of size {self.caller.sizes.describe(seen)}", span)
        self.sizes[name] = value
        self.to_caller[name] = arg.id if isinstance(arg, ast.Name) else str(value)


def _renames(t: TensorType, items: list[ast.AxisItem] | None) -> dict[str, str]:
    """Each name the block sees on an argument of type `t` -> the caller's name for that axis: unannotated or
    rearranged (every axis named) it keeps its names; relabelled by position it is renamed; a split or merge makes
    new axes, which have no name in the caller."""
    if items is None:
        return {n: n for n in t.names}
    atoms = [_name(a) for item in items if not isinstance(item, ast.AxisExpr)
             for a in (item.items if isinstance(item, ast.AxisGroup) else [item])]
    if sorted(atoms) == sorted(t.names):
        return {n: n for n in t.names}
    if len(items) != t.rank:
        return {}
    return {_name(item): axis.name for item, axis in zip(items, t.axes, strict=True)
            if not isinstance(item, ast.AxisGroup | ast.AxisExpr)}


def _name(item: ast.AxisItem) -> str:
    assert not isinstance(item, ast.AxisGroup | ast.AxisExpr)
    return item.name if isinstance(item, ast.AxisName) else str(item.value)


def caller_axes(t: TensorType, to_caller: dict[str, str], sizes: Sizes) -> tuple[Axis, ...]:
    """`t`'s axes named as the caller names them (see `Builder.in_caller_terms`): a name the signature bound as the
    caller's name, a dim's or free dim's name when it has that size, a name already made of sizes as it is, and a
    name the block made up as its size's name. A name that would occur twice (a block `f(x[B, C], y[B, D])`
    called with one tensor twice, or `conv(..., into=(P, Q))` on a square map, both `4`) is numbered for the
    later axis as `param(d, d)` numbers its second axis (`4`, `4_1`), never the block's own name: that would
    reach the caller's one-size-per-name table, and a second call at another size would clash with it."""
    out: list[Axis] = []
    for a in t.axes:
        if a.name in to_caller:
            name = to_caller[a.name]
        elif not a.name.isidentifier():   # already named by its size (`3*d`, a merge `h*hd`), in sizes, not names
            name = a.name
        elif a.name in sizes.declared or a.name in sizes.free:
            known = sizes.lookup(a.name)
            name = a.name if known is not None and sizes.equal(known, a.size) is True else str(a.size)
        else:
            name = str(a.size)
        base, n = name, 0
        while name in (x.name for x in out):
            n += 1
            name = f"{base}_{n}"
        out.append(Axis(name, a.size))
    return tuple(out)
