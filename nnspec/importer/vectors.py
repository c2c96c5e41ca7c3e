"""A matrix-vector product: `(h @ c.unsqueeze(-1)).squeeze(-1)`, torch's way of summing one axis of two tensors,
as the contraction `y[B, I] = h * c`.

`matmul` over the last two dims with a size-1 free dim on either side (a column `[..., N, 1]` on the right, a row
`[..., 1, N]` on the left) sums the shared axis and keeps the other side's free axis; the size-1 dim has no name
and stays one in the result (the `squeeze` after it drops it). The summed axis must carry one name on both sides
(relabelled when torch aligns two names by position); matmuls of two matrices go to `ops._matmul`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def lift_matvec(lifter: Lifter, n: fx.Node) -> Any:
    from nnspec.importer.ops import _broadcast, _matmul, _scope_idx
    from nnspec.importer.patterns import relabel

    a, b = lifter.lift(n.args[0]), lifter.lift(n.args[1])
    if not isinstance(a, L) or not isinstance(b, L) or len(a.axes) < 2 or len(b.axes) < 2 \
            or (a.axes[-2] and b.axes[-1]):
        return _matmul(lifter, n)
    scope, idx = _scope_idx(lifter, n)
    ga, gb = a.axes[-1], b.axes[-2]
    if len(ga) != 1 or len(gb) != 1:
        raise lifter.fail(n, f"a matrix-vector product summing a merged or size-1 axis ({ga} and {gb})")
    if ga != gb:
        if ga[0] in b.flat():
            raise lifter.fail(n, f"a matrix-vector product whose summed axes {ga[0]} and {gb[0]} cannot share a name")
        b = relabel(lifter, b, gb[0], ga[0], scope, idx - 0.1)
    if any(len(g) > 1 for t in (a, b) for g in t.axes):
        raise lifter.fail(n, "a matrix-vector product over merged axes")
    batch = _broadcast(lifter, n, L("", [], a.axes[:-2], [], scope, idx), L("", [], b.axes[:-2], [], scope, idx)) \
        if a.axes[:-2] or b.axes[:-2] else []
    axes = list(batch) + [a.axes[-2], b.axes[-1]]
    names = [x for g in axes for x in g]
    if len(set(names)) != len(names) or ga[0] in names:
        raise lifter.fail(n, "a matrix-vector product whose result would name two axes alike")
    node = L("{0} * {1}", [a, b], axes, names, scope, idx, atom=False, hint="y", bind=True)
    node.annot = ", ".join(names)
    return node


HANDLERS = {"aten.matmul.default": lift_matvec}
