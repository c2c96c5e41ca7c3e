"""An outer product or sum (each operand has an axis the other lacks) as an annotated assignment.

Torch broadcasts size-1 dims by position: Mamba's `dt[:, :, :, None] * A` is `[B, T, I, 1] * [I, N] -> [B, T, I,
N]`. The language refuses an outer broadcast written bare (nearly always a mistake) but writes it on purpose by
naming the result's axes: `decay[B, T, I, N] = dt * a`. For a product that is a contraction that sums nothing
(every axis of the factors is in the target), for a sum or difference each term broadcast onto the target: both
are exactly torch's elementwise op once the dims torch aligns carry the same names (checked: two named dims at one
position must be the same axis). Only these three ops are lifted so; a quotient stays the generic rule's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter

_SYMBOLS = {"aten.mul.Tensor": "*", "aten.add.Tensor": "+", "aten.sub.Tensor": "-"}


def _outer(a: Any, b: Any) -> bool:
    if not isinstance(a, L) or not isinstance(b, L):
        return False
    fa, fb = set(a.flat()), set(b.flat())
    return bool(fa - fb) and bool(fb - fa)


def lift_outer(lifter: Lifter, n: fx.Node) -> Any:
    from nnspec.importer.ops import _BINARY, _binary, _broadcast, _scope_idx, aligned_axes

    sym = _SYMBOLS[str(n.target)]
    a0, b0 = a, b = [lifter.lift(x) for x in n.args[:2]]
    if len(n.args) > 2 or n.kwargs.get("alpha", 1) != 1:
        return _binary(lifter, n, _BINARY[str(n.target)])
    a, b = lifter.rules.align(lifter, n, a, b)     # dims torch aligns by position, named alike (`windows.py`)
    if isinstance(a, L) and isinstance(b, L) and all(len(g) < 2 for t in (a, b) for g in t.axes):
        b = _apart(lifter, n, a, b)        # one name at two positions: two axes (`_apart`)
    if not _outer(a, b):
        if a is a0 and b is b0:
            return _binary(lifter, n, _BINARY[str(n.target)])
        scope, idx = _scope_idx(lifter, n)
        return L(f"{{0}} {sym} {{1}}", [a, b], _broadcast(lifter, n, a, b),
                 a.order + [x for x in b.order if x not in a.order], scope, idx, atom=False, hint="h")
    if any(len(g) > 1 for t in (a, b) for g in t.axes):
        raise lifter.fail(n, "an outer broadcast of an operand with merged axes")
    axes = aligned_axes(lifter, n, a, b)
    names = [x for g in axes for x in g]
    if len(set(names)) != len(names) or "1" in names:
        raise lifter.fail(n, "an outer broadcast whose result would name two axes alike")
    scope, idx = _scope_idx(lifter, n)
    node = L(f"{{0}} {sym} {{1}}", [a, b], axes, names, scope, idx, atom=False, hint="h", bind=True)
    node.annot = ", ".join(names)
    return node


def _apart(lifter: Lifter, n: fx.Node, a: L, b: L) -> L:
    """Torch's dims at different positions are different axes even where their sizes named them alike (RetNet's
    `k[..., :, None] * v[..., None, :]` with dk = dv): name b's axis after where it came from, another dim of
    its size (`dv`), or a new name, so that the product keeps both."""
    from nnspec.importer.patterns import relabel

    ra, rb = list(reversed(a.axes)), list(reversed(b.axes))
    for i, g in enumerate(rb):
        if not g or (i < len(ra) and ra[i] == g) or g[0] not in a.flat():
            continue
        new = alternative(lifter, g[0], a.flat() + b.flat(), n)
        scope, idx = lifter.scope_of(n), lifter.index[n]
        b = relabel(lifter, b, g[0], new, scope, idx - 0.1)
        rb = list(reversed(b.axes))
    return b


def alternative(lifter: Lifter, name: str, taken: list[str], n: fx.Node) -> str:
    """Another name for an axis called `name` (by its size): a dim of the same value and the same formula first
    (`dv` for `dk`, both `d / heads`), then any dim of that value, else `name_2`, ... (its size remembered)."""
    from nnspec.importer.ops import _size_of_name
    from nnspec.importer.slices import local_axis

    d = lifter.dims
    size = d.values.get(name)
    formula = d.derived.get(name)
    same = [k for k, v in d.values.items() if v == size and k != name and k not in taken and "layer" not in k]
    same.sort(key=lambda k: d.derived.get(k) != formula)
    if size is not None and same:
        d.used.add(same[0])
        return same[0]
    return local_axis(lifter, f"{name}_2", taken, size if size is not None else _size_of_name(lifter, name, n))


def _misaligned(a: Any, b: Any) -> bool:
    """Whether one axis name sits at two torch positions that broadcasting keeps apart."""
    if not isinstance(a, L) or not isinstance(b, L):
        return False
    ra, rb = list(reversed(a.axes)), list(reversed(b.axes))
    return any(g and (i >= len(ra) or ra[i] != g) and g[0] in a.flat() for i, g in enumerate(rb))


def lift_quotient(lifter: Lifter, n: fx.Node) -> Any:
    """`a / b`: the generic rule, but refused where a name sits at two positions (no annotation writes it)."""
    from nnspec.importer.ops import _BINARY, _binary

    a, b = lifter.lift(n.args[0]), lifter.lift(n.args[1])
    if _misaligned(a, b) or _misaligned(b, a):
        raise lifter.fail(n, "a quotient whose operands hold one axis name at two positions (two axes of one size)")
    return _binary(lifter, n, _BINARY[str(n.target)])


HANDLERS = {**{name: lift_outer for name in _SYMBOLS}, "aten.div.Tensor": lift_quotient}
