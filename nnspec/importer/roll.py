"""A cyclic shift (`torch.roll`, or the `cat` of an axis's tail and head that nnspec's generated code writes for
it) as the language writes it: two slices of one axis joined in the other order (examples/swin.yaml's `roll`),

    concat(slice(x, over=H, start=by, into=Ht), slice(x, over=H, stop=by, into=Hh), over=(Ht, Hh), into=H)

`cat([x[by:], x[:by]], d)` is that expression term by term, and `torch.roll(x, -by, d)` is the same tensor
(position i takes position (i + by) mod size), so both are lifted to it; `roll(x, s, d)` with `s > 0` is the
shift by `size - s`. The axis must be a configured one (a slice of a free axis would hold only at the traced
size, `slices.free_sized`). Any other `cat` goes to the zero-padding rule (`conv1d.lift_cat`) and then the generic
one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def _bounds(lifter: Lifter, n: Any) -> tuple[fx.Node, int, int, int] | None:
    """(source, dim, start, stop) of a unit-step `aten.slice.Tensor`, the dim counted from the front."""
    n = lifter.resolve(n)
    if not isinstance(n, fx.Node) or str(n.target) != "aten.slice.Tensor":
        return None
    src = lifter.resolve(n.args[0])
    shape = lifter.value(src).shape
    d = n.args[1] if len(n.args) > 1 else 0
    d = d % len(shape)
    start = n.args[2] if len(n.args) > 2 and n.args[2] is not None else 0
    stop = n.args[3] if len(n.args) > 3 and n.args[3] is not None else shape[d]
    step = n.args[4] if len(n.args) > 4 else 1
    if not all(isinstance(v, int) for v in (start, stop)) or step != 1:
        return None
    start, stop, _ = slice(start, stop).indices(shape[d])
    return src, d, start, stop


def rolled(lifter: Lifter, n: fx.Node, x: Any, size: int, d: int, by: int) -> L:
    """`x` shifted by `by` along torch dim `d` of `size` (position i takes position (i + by) mod size)."""
    from nnspec.importer.ops import _bound, merge_groups
    from nnspec.importer.patterns import relabel
    from nnspec.importer.slices import free_sized, local_axis

    if not isinstance(x, L):
        raise lifter.fail(n, "a cyclic shift of a constant table")
    scope, idx = lifter.scope_of(n), lifter.index[n]
    if not x.axes[d]:
        raise lifter.fail(n, "a cyclic shift along a size-1 axis")
    if len(x.axes[d]) > 1 or "*" in x.axes[d][0]:
        # pieces of a window partition merged back (`(nh wh)`), which `over=` cannot name: merged, then named
        x = merge_groups(lifter, x, [d], n) if len(x.axes[d]) > 1 else x
        if any(free_sized(lifter, a) for a in x.axes[d][0].split("*")):
            raise lifter.fail(n, f"a cyclic shift along axis {x.axes[d][0]}, whose size is not a configured one (its "
                                 "bounds would hold only at the traced size)")
        # one name per merged axis (the same in every call of a block, so that repeated layers render alike; apart
        # for each grid, since the caller reads the name back as the axis it renames)
        names: dict[str, str] = lifter.__dict__.setdefault("roll_names", {})
        old = x.axes[d][0]
        if old not in names:
            base = next(b for b in ("H", "W", "R") if b not in x.flat())
            names[old] = local_axis(lifter, base, x.flat() + list(names.values()), size)
        x = relabel(lifter, x, old, names[old], scope, max(idx - 0.1, x.idx + 0.001))
    ax = x.axes[d][0]
    if free_sized(lifter, ax):
        raise lifter.fail(n, f"a cyclic shift along axis {ax}, whose size is not a configured one (its bounds would "
                             "hold only at the traced size)")
    # the pieces' names: one pair per (axis, shift), the same in every call of a block, apart for another shift
    pieces: dict[tuple[str, int], tuple[str, str]] = lifter.__dict__.setdefault("roll_pieces", {})
    if (ax, by) not in pieces:
        taken = x.flat() + [p for pair in pieces.values() for p in pair]
        tail = local_axis(lifter, f"{ax}t", taken, size - by)
        pieces[(ax, by)] = (tail, local_axis(lifter, f"{ax}h", [*taken, tail], by))
    tail, head = pieces[(ax, by)]
    values = lifter.dims.values
    half = next((k for k in lifter.dims.ordered() if "window" in k and values[k] == 2 * by), None)
    whole = next((k for k in lifter.dims.ordered() if "window" in k and values[k] == by), None)
    back = next((k for k in lifter.dims.ordered() if "window" in k and values[k] == 2 * (size - by)), None)
    b = f"{half} // 2" if half else whole or str(by)
    if not half and not whole and back and values.get(ax) == size:
        b = f"{ax} - {back} // 2"               # the shift undone: the rest of the axis (`h0 - window_size // 2`)
    x = _bound(x)
    if x.refs or "(" in x.fmt:
        x.bind = True                           # read twice below: computed once
    fmt = (f"concat(slice({{0}}, over={ax}, start={b}, into={tail}), slice({{0}}, over={ax}, stop={b}, into={head}), "
           f"over=({tail}, {head}), into={ax})")
    return L(fmt, [x], x.axes, x.order, scope, max(idx, x.idx + 0.002), hint=x.hint)   # after x (a roll's 1st dim)


def lift_cat(lifter: Lifter, n: fx.Node) -> Any:
    """`cat([x[by:], x[:by]], d)`: `x` rolled by `by`; any other concatenation to the next rule."""
    from nnspec.importer.conv1d import lift_cat as padding_or_generic

    parts = list(n.args[0])
    if len(parts) == 2:
        a, b = (_bounds(lifter, p) for p in parts)
        d = n.args[1] if len(n.args) > 1 else 0
        if a is not None and b is not None and a[0] is b[0] and a[1] == b[1] == d % lifter.value(n).dim():
            size = int(lifter.value(a[0]).shape[a[1]])
            by = a[2]
            if 0 < by < size and a[3] == size and b[2] == 0 and b[3] == by:
                return rolled(lifter, n, lifter.lift(a[0]), size, a[1], by)
    return padding_or_generic(lifter, n)


def lift_roll(lifter: Lifter, n: fx.Node) -> L:
    """`torch.roll(x, shifts, dims)` over one dim, or several (a shift along each in turn, which is the same
    tensor: the shifts along different dims commute)."""
    shifts, dims = list(n.args[1]), list(n.args[2]) if len(n.args) > 2 else []
    if len(shifts) != len(dims) or not dims or not all(isinstance(s, int) for s in shifts):
        raise lifter.fail(n, "a roll of the flattened tensor or with shifts computed at run time")
    x = lifter.lift(n.args[0])
    shape = lifter.value(n).shape
    for shift, d in zip(shifts, dims, strict=True):
        d = d % len(shape)
        by = (-shift) % int(shape[d])
        if by:
            x = rolled(lifter, n, x, int(shape[d]), d, by)
    return x


HANDLERS: dict[str, Any] = {"aten.cat.default": lift_cat, "aten.roll.default": lift_roll}
