"""`where` and `masked_fill`: masks computed from sizes are recognised by value (all-keeping: the value itself;
lower-triangular over two dims: `causal_mask(T, S)`); a mask computed from the inputs (a padding mask) is a value
like any other, its axes relabelled to the ones torch aligns it with by position (`keep[B, S]` against scores
`[B, h, T, S]`), since the language aligns by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def _where(lifter: Lifter, n: fx.Node) -> L:
    """`where(mask, a, b)`; a causal mask computed from sizes is `causal_mask(T, S)` over the last two axes."""
    from nnspec.importer.ops import _literal, _scope_idx
    from nnspec.importer.patterns import Static, is_causal

    cond, a, b = (lifter.lift(x) for x in n.args[:3])
    scope, idx = _scope_idx(lifter, n)
    ref = a if isinstance(a, L) else b
    if isinstance(cond, Static) and isinstance(cond.value, torch.Tensor) and cond.value.dtype == torch.bool \
            and bool(cond.value.all()) and isinstance(a, L):
        return a                                   # a mask that keeps everything (no padding given)
    if isinstance(cond, Static):
        # a lower-triangular mask over two dims (`mask[:, :, None]` against `[B, T, S, h]` scores), right-aligned
        m = cond.value
        big = [i for i, size in enumerate(m.shape) if size > 1] if isinstance(m, torch.Tensor) else []
        offset = len(ref.axes) - m.dim() if isinstance(ref, L) and big else 0
        m2 = m.reshape(m.shape[big[0]], m.shape[big[1]]) if len(big) == 2 else None
        # scores laid out keys first (`s[B, S, h, T]`): the mask is causal_mask(T, S) transposed
        flip = m2 is not None and not is_causal(m2) and is_causal(m2.T)
        if m2 is None or offset < 0 or not (flip or is_causal(m2)) \
                or any(len(ref.axes[offset + i]) != 1 for i in big):
            raise lifter.fail(n, "a where over a constant mask that is not causal")
        first, second = (ref.axes[offset + i][0] for i in big)
        t, s_ = (second, first) if flip else (first, second)
        axes = [()] * len(ref.axes)
        axes[offset + big[0]], axes[offset + big[1]] = (first,), (second,)
        cond = L(f"causal_mask({t}, {s_})", [], axes, [t, s_], scope, idx)
    if isinstance(cond, L) and cond.refs and isinstance(ref, L):
        cond = _aligned(lifter, cond, ref, scope, idx)
    operands = [cond, a, b]
    refs = [o for o in operands if isinstance(o, L)]
    parts, k = [], 0
    for o in operands:
        if isinstance(o, L):
            parts.append(f"{{{k}}}")
            k += 1
        else:
            parts.append(_literal(o))
    return L(f"where({', '.join(parts)})", refs, ref.axes, ref.order, scope, idx, hint=ref.hint)


def _masked_fill(lifter: Lifter, n: fx.Node) -> L:
    """`x.masked_fill(mask, v)` with a mask computed from sizes: nothing when it masks nothing, `where(causal_mask(
    T, S), x, v)` when it masks the future (the mask's two non-1 dims, right-aligned against x's)."""
    from nnspec.importer.ops import _literal, _scope_idx
    from nnspec.importer.patterns import Static, is_causal

    x, mask, fill = lifter.lift(n.args[0]), lifter.lift(n.args[1]), n.args[2]
    if not isinstance(mask, Static) or not isinstance(x, L):
        raise lifter.fail(n, "a masked_fill with a mask computed from the inputs")
    m = mask.value
    if not bool(m.any()):
        return x
    big = [i for i, size in enumerate(m.shape) if size > 1]
    offset = len(x.axes) - m.dim()
    if len(big) != 2 or not is_causal(~m.reshape(m.shape[big[0]], m.shape[big[1]])):
        raise lifter.fail(n, "a masked_fill with a constant mask that is not causal")
    t, s_ = (x.axes[offset + i] for i in big)
    if len(t) != 1 or len(s_) != 1:
        raise lifter.fail(n, "a causal mask over merged axes")
    scope, idx = _scope_idx(lifter, n)
    return L(f"where(causal_mask({t[0]}, {s_[0]}), {{0}}, {_literal(fill)})", [x], x.axes, x.order, scope, idx,
             hint=x.hint)


def _aligned(lifter: Lifter, cond: L, ref: L, scope: str, idx: float) -> L:
    """Relabel `cond`'s axes to the names torch aligns them with by position in `ref` (right-aligned)."""
    from nnspec.importer.patterns import relabel

    offset = len(ref.axes) - len(cond.axes)
    for i, group in enumerate(list(cond.axes)):
        j = offset + i
        if j < 0 or len(group) != 1 or len(ref.axes[j]) != 1 or ref.axes[j] == group:
            continue
        new = ref.axes[j][0]
        if new not in cond.flat():
            cond = relabel(lifter, cond, group[0], new, scope, idx - 0.05)
    return cond


HANDLERS: dict[str, Any] = {
    "aten.masked_fill.Scalar": _masked_fill, "aten.where.self": _where, "aten.where.ScalarOther": _where,
    "aten.where.ScalarSelf": _where, "aten.where.Scalar": _where,
}
