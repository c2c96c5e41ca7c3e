"""Named-axis views: `x[B, T, (H D)]` shows a tensor under new axis names, splitting or merging axes, or (when it
names every axis once) in a new order. A view is worked out from the tensor's type and the annotation alone; the
builder emits the one `rearrange` node it needs, if any.

Sizes a view cannot decide (relabelling `N` as the free dim `K`, splitting a free axis) become run-time guards:
`settle(span)` turns the facts just assumed into guards located at `span`, as soon as they are assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy

from nnspec.compiler.elaborate.static_eval import evaluate
from nnspec.compiler.elaborate.tensor_types import show
from nnspec.compiler.ir import Axis, TensorType
from nnspec.compiler.sizes import MAX_SIZE, Sizes
from nnspec.errors import SpecError
from nnspec.spec import ast
from nnspec.spec.source import Span

SizeOf = Callable[[str, Span], sympy.Expr | None]   # the size a name denotes where the view is written, if any
Settle = Callable[[Span], None]
Rearrange = tuple[tuple[int, ...], tuple[Axis, ...]]   # a `rearrange` node's permutation and result axes


def view(t: TensorType, items: list[ast.AxisItem], span: Span, sizes: Sizes, size_of: SizeOf,
         settle: Settle) -> Rearrange | None:
    """The rearrange that shows a tensor of type `t` as `[items]`, or None when it already reads so."""
    items, size_of = _sized(items, sizes, size_of)
    names = list(t.names)
    atoms = [a for item in items for a in (item.items if isinstance(item, ast.AxisGroup) else [item])]
    for a in atoms:
        if isinstance(a, ast.AxisInt) and not 1 <= a.value <= MAX_SIZE:
            raise SpecError("E023", f"axis size {a.value} is out of range (1 to 2^{MAX_SIZE.bit_length() - 1})",
                            span)
    atom_names = [a.name if isinstance(a, ast.AxisName) else str(a.value) for a in atoms]
    if sorted(atom_names) == sorted(names) and len(set(atom_names)) == len(atom_names):
        return _reorder(t, items, atom_names)
    if len(items) != t.rank:
        raise SpecError("E018", f"cannot view {show(t)} as [{_items_text(items)}]: it has "
                        f"{t.rank} axes and the annotation lists {len(items)}; to rearrange, name every axis "
                        "exactly once", span)
    out: list[Axis] = []
    for item, axis in zip(items, t.axes, strict=True):
        if isinstance(item, ast.AxisGroup):
            out.extend(_split(axis, item, span, sizes, size_of, settle))
        else:
            out.append(_relabel(axis, item, span, sizes, size_of, settle))
    new = TensorType(tuple(out), t.dtype)
    if new == t:
        return None
    return tuple(range(t.rank)), new.axes


def _sized(items: list[ast.AxisItem], sizes: Sizes, size_of: SizeOf) -> tuple[list[ast.AxisItem], SizeOf]:
    """Each `(2 * d)` as the axis it names: an axis named by its size's value (`2*d`, as a size argument names its
    axis), which the view checks like a dim; the names in it must denote sizes where it is written."""
    if not any(isinstance(i, ast.AxisExpr) for i in items):
        return items, size_of
    known: dict[str, sympy.Expr] = {}
    out: list[ast.AxisItem] = []
    for item in items:
        if not isinstance(item, ast.AxisExpr):
            out.append(item)
            continue
        value = size_expr(item, sizes, size_of)
        known[str(value)] = value
        out.append(ast.AxisName(str(value), span=item.span))

    def with_exprs(name: str, span: Span) -> sympy.Expr | None:
        return known[name] if name in known else size_of(name, span)
    return out, with_exprs


def size_expr(item: ast.AxisExpr, sizes: Sizes, size_of: SizeOf,
              unknown: dict[str, sympy.Expr] | None = None) -> sympy.Expr:
    """The size `(2 * d)` denotes; `unknown` gives names that have no size yet a symbol to solve for."""
    def lookup(name: str, span: Span) -> Any:
        if unknown is not None and name in unknown:
            return unknown[name]
        size = size_of(name, span)
        if size is None:
            raise SpecError("E017", f"unknown axis '{name}': the names in a size expression are sizes known "
                            "where it is written (dims, size parameters, axes seen earlier)", span)
        return size
    value = evaluate(item.expr, lookup, sizes.concrete)
    if not isinstance(value, sympy.Expr) or isinstance(value, sympy.Float):
        raise SpecError("E026", f"({expr_text(item.expr)}) is not a size", item.span)
    c = sizes.concrete(value)
    if c.is_number and (not c.is_Integer or not 1 <= c <= MAX_SIZE):
        raise SpecError("E014" if not c.is_Integer else "E023",
                        f"axis ({expr_text(item.expr)}) is {c}, which is not a size", item.span)
    return value


def _reorder(t: TensorType, items: list[ast.AxisItem], atoms: list[str]) -> Rearrange | None:
    """Every axis named once: a permutation, with groups merged."""
    perm = tuple(t.names.index(a) for a in atoms)
    out: list[Axis] = []
    merged: list[int] = []   # positions of merged axes, which are named after their sizes
    for item in items:
        if isinstance(item, ast.AxisGroup):
            members = [t.axes[t.names.index(a.name if isinstance(a, ast.AxisName) else str(a.value))]
                       for a in item.items]
            size = sympy.Mul(*[m.size for m in members])
            if len(members) > 1:
                merged.append(len(out))
            out.append(Axis(_product_name(members), size) if len(members) > 1 else members[0])
        else:
            out.append(t.axes[t.names.index(item.name if isinstance(item, ast.AxisName) else str(item.value))])
    _number_repeats(out, merged)
    if perm == tuple(range(t.rank)) and tuple(out) == t.axes:
        return None
    return perm, tuple(out)


def _number_repeats(axes: list[Axis], merged: list[int]) -> None:
    """Merged axes of one size are named alike (`(nh wh)` and `(nw win)` both `8`): the later ones are numbered
    as `param(d, d)` numbers its second axis (`8`, `8_1`), so one annotation may merge groups of equal size. The
    number follows the size in the name, so the name still means one size wherever it occurs."""
    taken = {a.name for i, a in enumerate(axes) if i not in merged}
    for i in merged:
        name, n = axes[i].name, 0
        while name in taken:
            n += 1
            name = f"{axes[i].name}_{n}"
        taken.add(name)
        axes[i] = Axis(name, axes[i].size)


def _product_name(members: list[Axis]) -> str:
    """A merged axis's name: its factors' sizes in the order written (`n_head*head_dim` for `(n_head head_dim)`),
    which is the memory layout, the first factor outermost; `str` of the sympy product would sort them. Members
    sized by expressions may cancel (`(heads d/heads)` is `d`), and numbers have no order to keep (`(14 14)` is
    `196`), so the product names those."""
    size = sympy.Mul(*[m.size for m in members])
    symbols = sum(1 for m in members if m.size.is_Symbol)
    if symbols >= 2 and all(m.size.is_Symbol or m.size.is_Integer for m in members):
        return "*".join(str(m.size) for m in members)
    return str(size)


def _relabel(axis: Axis, item: ast.AxisName | ast.AxisInt, span: Span, sizes: Sizes, size_of: SizeOf,
             settle: Settle) -> Axis:
    if isinstance(item, ast.AxisInt):
        want: sympy.Expr | None = sympy.Integer(item.value)
        name = str(item.value)
    else:
        name = item.name
        want = size_of(name, span)
    if want is not None:
        verdict = sizes.equal(want, axis.size)
        if verdict is False:
            raise SpecError("E012", f"axis {axis.name} has size {sizes.describe(axis.size)}, but "
                            f"'{name}' is {sizes.describe(want)}", span)
        if verdict is None:  # e.g. relabelling N as the free dim K: keep N's size, check K == N when run
            sizes.assume(sympy.Eq(want, axis.size), f"{want} == {axis.size}")
            settle(span)
            return Axis(name, axis.size)
        return Axis(name, want if name in sizes.declared or name in sizes.free else axis.size)
    return Axis(name, axis.size)


def _split(axis: Axis, group: ast.AxisGroup, span: Span, sizes: Sizes, size_of: SizeOf,
           settle: Settle) -> list[Axis]:
    known: list[sympy.Expr | None] = []
    for atom in group.items:
        if isinstance(atom, ast.AxisInt):
            known.append(sympy.Integer(atom.value))
        else:
            known.append(size_of(atom.name, span))
    unknown = [i for i, k in enumerate(known) if k is None]
    names = [a.name if isinstance(a, ast.AxisName) else str(a.value) for a in group.items]
    if len(unknown) > 1:
        raise SpecError("E018", f"cannot split {axis.name} into ({' '.join(names)}): the sizes of "
                        f"{' and '.join(names[i] for i in unknown)} are both unknown; name a dim for all but one",
                        span)
    product = sympy.Mul(*[k for k in known if k is not None])
    total = sizes.concrete(axis.size)
    part = sizes.concrete(product)
    if unknown:
        if total.is_Number and part.is_Number and (total % part) != 0:
            raise SpecError("E014", f"cannot split axis {sizes.describe(axis.size)} into "
                            f"({' '.join(names)}): {total} is not divisible by {part}", span)
        known[unknown[0]] = sympy.cancel(axis.size / product)
        if not (total.is_Number and part.is_Number):
            sizes.assume(sympy.Eq(sympy.Mod(axis.size, product), 0), f"{axis.size} % {product} == 0")
            settle(span)
    elif sizes.equal(axis.size, product) is None:
        sizes.assume(sympy.Eq(axis.size, product), f"{axis.size} == {product}")
        settle(span)
    elif sizes.equal(axis.size, product) is False:
        raise SpecError("E014", f"cannot split axis {sizes.describe(axis.size)} into ({' '.join(names)}) "
                        f"= {sizes.concrete(product)}", span)
    return [Axis(n, k) for n, k in zip(names, known, strict=True)]  # type: ignore[arg-type]


def _items_text(items: list[ast.AxisItem]) -> str:
    """An annotation's axes as written: `B, T, (H D)`."""
    def one(i: ast.AxisItem) -> str:
        if isinstance(i, ast.AxisGroup):
            return "(" + " ".join(one(x) for x in i.items) + ")"
        if isinstance(i, ast.AxisExpr):
            return "(" + expr_text(i.expr) + ")"
        return i.name if isinstance(i, ast.AxisName) else str(i.value)
    return ", ".join(one(i) for i in items)


def expr_text(e: ast.Expr) -> str:
    """A size expression as written (names, integers and operators)."""
    if isinstance(e, ast.BinOp):
        return f"{expr_text(e.left)} {e.op} {expr_text(e.right)}"
    if isinstance(e, ast.Name):
        return e.id
    assert isinstance(e, ast.Num)   # the grammar of a size expression has names, integers and operators only
    return str(e.value)
