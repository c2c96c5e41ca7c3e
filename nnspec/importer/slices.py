"""A slice of part of a configured axis as the language's `slice(x, over=AX, start=, stop=, into=NAME)`.

Mamba's `x_proj` output holds the step sizes' low-rank input, B and C side by side (`dbc[..., :r]`,
`dbc[..., r:r+n]`, `dbc[..., r+n:]`); each piece is a range of the axis, which `slice` writes as itself. The
bounds are written with the dims they are made of where one dim or a sum of two is their value (`time_step_rank +
state_size`), else as numbers; the piece's axis is named after a dim of its length when the value has no axis of
that name already, else a new name. A slice along a free axis (batch, sequence) is refused: its bounds were
traced at one length and would be wrong at another. A whole-axis slice is the value itself (`ops._slice`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def size_expr(lifter: Lifter, size: int) -> str:
    """A static `size` written with dims: one dim, the sum of two dims (a slice's bound after two pieces), or a
    small multiple (`Dims.expr`); never a free dim (a kernel of 3 traced at batch 3 is still 3)."""
    d = lifter.dims
    got = next((k for k in d.ordered() if d.values[k] == size), None)   # never the batch or length: static
    if got is not None:
        d.used.add(got)
        return got
    names = [n for n in d.ordered() if "layer" not in n]
    for a in names:
        for b in names:
            if a != b and d.values[a] + d.values[b] == size and d.values[a] > 1 and d.values[b] > 1:
                d.used.update((a, b))
                return f"{a} + {b}"
    return d.expr(size) if size not in d.free else str(size)


def local_axis(lifter: Lifter, base: str, taken: list[str], size: int) -> str:
    """A new axis name for a value's block (`Tp`, `x_proj_size_5`): the same in every call of the block, so that
    the layers of a module list render alike; no dim, free dim or axis in `taken` has it."""
    d = lifter.dims
    name, j = base, 2
    while name in d.values or name in d.free.values() or name in taken or name in d.derived:
        name, j = f"{base}{j}", j + 1
    d.local[name] = size
    return name


def _piece_name(lifter: Lifter, x: L, size: int, ax: str) -> str:
    d = lifter.dims
    cand = next((n for n in d.ordered() if d.values[n] == size and "layer" not in n), None)
    if cand is not None and cand not in x.flat():
        d.used.add(cand)
        return cand
    return local_axis(lifter, f"{ax}_{size}", x.flat(), size)


def free_sized(lifter: Lifter, ax: str) -> bool:
    """Whether axis `ax`'s length follows a free dim (`T`, keys `S` relabelled from it, a padded `Tp`)."""
    seen: set[str] = set()
    while ax in lifter.dims.aliases and ax not in seen:
        seen.add(ax)
        ax = lifter.dims.aliases[ax]
    return ax in lifter.dims.free.values() or ax in getattr(lifter, "free_like", set())


def lift_slice(lifter: Lifter, n: fx.Node) -> Any:
    from nnspec.importer.ops import _slice as whole

    x = lifter.lift(n.args[0])
    if not isinstance(x, L):
        return whole(lifter, n)
    return piece(lifter, n, x, n.args[0], *(list(n.args[1:5]) + [None] * 4)[:4])


def piece(lifter: Lifter, n: fx.Node, x: L, src: fx.Node, dim: Any, start: Any, stop: Any, step: Any) -> L:
    """`x[start:stop:step]` along torch dim `dim` of `src` (lifted: `x`), for `n` (a slice, or one member of a
    `split_with_sizes`: `split_sizes.py`)."""
    from nnspec.importer.ops import _dim, _scope_idx
    from nnspec.importer.patterns import relabel

    shape = lifter.value(src).shape
    d = _dim(x, dim if dim is not None else 0)
    size = shape[d]
    start = start if start is not None else 0
    stop = stop if stop is not None else size
    step = step if step is not None else 1
    if not all(isinstance(v, int) for v in (start, stop, step)) or step < 1:
        raise lifter.fail(n, "a slice with bounds computed at run time or a negative step")
    start, stop, _ = slice(start, stop, step).indices(size)
    if start == 0 and stop == size and step == 1:
        return x
    if len(x.axes[d]) != 1:
        raise lifter.fail(n, "a slice of part of a merged or size-1 axis")
    ax = x.axes[d][0]
    if free_sized(lifter, ax):
        raise lifter.fail(n, f"a slice of part of axis {ax}, whose size is not a configured one (its bounds would "
                             "hold only at the traced size)")
    scope, idx = _scope_idx(lifter, n)
    if "*" in ax:
        # a merged name (`3*dk`, a linear's width) cannot be written as `over=`: the axis gets a name first, once
        # for all the slices of one value (`proj[B, T, F]`)
        named = getattr(lifter, "named_for_slices", None)
        if named is None:
            named = lifter.named_for_slices = {}
        key = (id(x), ax)
        if key not in named:
            named[key] = relabel(lifter, x, ax, local_axis(lifter, "F", x.flat(), size), x.scope, x.idx + 0.01)
            named[key].bind = True
        x = named[key]
        ax = x.axes[d][0]
    length = len(range(start, stop, step))
    into = _piece_name(lifter, x, length, ax)
    args = [f"over={ax}"]
    if start:
        args.append(f"start={size_expr(lifter, start)}")
    if stop != size:
        args.append(f"stop={size_expr(lifter, stop)}")
    if step != 1:
        args.append(f"step={step}")
    axes = [(into,) if i == d else g for i, g in enumerate(x.axes)]
    order = [into if a == ax else a for a in x.order]
    return L(f"slice({{0}}, {', '.join(args)}, into={into})", [x], axes, order, scope, idx, hint=x.hint)


HANDLERS = {"aten.slice.Tensor": lift_slice}
