"""Index-moving aten ops as the language's functions: `topk` (values and indices, the axis replaced by a new one),
`scatter` into a constant zero table (a router's top-k weights spread back over the experts), and `movedim` (a
layout change like `permute`, nothing written).

`topk` keeps torch's order (largest first, sorted), which is the language's; `scatter` writes
`x[..., idx[..., j, ...], ...] = src[..., j, ...]` along one axis, the language's `scatter(x, idx, src, over=AX)`,
so both are written as themselves once their axes line up by name: the index and source must hold the same axes
as each other, and the target's at every other dim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def _new_axis(lifter: Lifter, base: str = "K") -> str:
    """An axis name no dim and no free axis has (the `into=` of a `topk`)."""
    taken = set(lifter.dims.values) | set(lifter.dims.free.values()) | getattr(lifter, "new_axes", set())
    name = base
    j = 2
    while name in taken:
        name, j = f"{base}{j}", j + 1
    lifter.new_axes = getattr(lifter, "new_axes", set()) | {name}
    return name


def _topk(lifter: Lifter, n: fx.Node) -> list[L]:
    from nnspec.importer.ops import _bound, _dim, _scope_idx

    x = lifter.lift(n.args[0])
    k = n.args[1]
    d = _dim(x, n.args[2] if len(n.args) > 2 else -1)
    largest = n.args[3] if len(n.args) > 3 else n.kwargs.get("largest", True)
    ordered = n.args[4] if len(n.args) > 4 else n.kwargs.get("sorted", True)
    if not isinstance(x, L) or not isinstance(k, int) or not largest or not ordered:
        raise lifter.fail(n, "only the k largest, sorted, of a lifted value are lifted")
    if len(x.axes[d]) != 1:
        raise lifter.fail(n, "a top-k over a merged or size-1 axis")
    ax, into = x.axes[d][0], _new_axis(lifter)
    scope, idx = _scope_idx(lifter, n)
    tup = L(f"topk({{0}}, {lifter.dims.expr(k)}, over={ax}, into={into})", [_bound(x)], [], [], scope, idx,
            bind=True, hint="top")
    tup.names = ["top", "index"]
    axes = [(into,) if i == d else a for i, a in enumerate(x.axes)]
    order = [into if a == ax else a for a in x.order]
    return [L("{0}", [tup], axes, order, scope, idx, member=(tup, j)) for j in range(2)]


def _zeros(lifter: Lifter, n: Any) -> L | None:
    """A constant all-zero float table computed from sizes only: `zeros(AXES)`, each dim named by its size."""
    n = lifter.resolve(n)
    v = lifter.value(n)
    if not isinstance(n, fx.Node) or n not in lifter.static or not isinstance(v, torch.Tensor) \
            or not v.is_floating_point() or v.dtype != torch.float32 or bool(v.any()):
        return None
    axes = [(lifter.dims.free[s],) if s in lifter.dims.free else () if s == 1 else (lifter.dims.name(s),)
            for s in v.shape]
    names = [a[0] for a in axes if a]
    if len(set(names)) != len(names):
        return None
    return L(f"zeros({', '.join(names)})", [], axes, names, lifter.scope_of(n), lifter.index[n], hint="zeros")


def _scatter(lifter: Lifter, n: fx.Node) -> L:
    from nnspec.importer.ops import _dim, _scope_idx

    if len(n.args) != 4 or n.kwargs.get("reduce"):
        raise lifter.fail(n, "a scatter with a reduction")
    x = _zeros(lifter, n.args[0])
    if x is None:
        x = lifter.lift(n.args[0])
    index, src = lifter.lift(n.args[2]), lifter.lift(n.args[3])
    if not all(isinstance(v, L) for v in (x, index, src)):
        raise lifter.fail(n, "a scatter of values that are not lifted tensors")
    d = _dim(x, n.args[1])
    xv, iv, sv = (lifter.value(a) for a in (n.args[0], n.args[2], n.args[3]))
    if iv.shape != sv.shape or iv.dim() != xv.dim() or any(
            iv.shape[i] != xv.shape[i] for i in range(xv.dim()) if i != d):
        raise lifter.fail(n, "a scatter whose index does not cover the target's other dims")
    if len(x.axes[d]) != 1 or index.axes != src.axes or any(
            index.axes[i] != x.axes[i] for i in range(len(x.axes)) if i != d):
        raise lifter.fail(n, "a scatter whose index, source and target do not name their other axes alike")
    scope, idx = _scope_idx(lifter, n)
    return L(f"scatter({{0}}, {{1}}, {{2}}, over={x.axes[d][0]})", [x, index, src], x.axes, x.order, scope, idx,
             hint="scattered")


def _movedim(lifter: Lifter, n: fx.Node) -> L:
    """`movedim(x, source, destination)`: a permutation of torch's dims; the named value is unchanged."""
    from nnspec.importer.ops import _dim, _permuted

    x = lifter.lift(n.args[0])
    src, dst = n.args[1], n.args[2]
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    rank = len(x.axes)
    src, dst = [_dim(x, s) for s in src], [_dim(x, t) for t in dst]
    rest = iter(i for i in range(rank) if i not in src)
    perm = [src[dst.index(j)] if j in dst else next(rest) for j in range(rank)]
    return _permuted(lifter, n, x, perm)


HANDLERS = {"aten.topk.default": _topk, "aten.scatter.src": _scatter, "aten.movedim.int": _movedim,
            "aten.movedim.intlist": _movedim}
