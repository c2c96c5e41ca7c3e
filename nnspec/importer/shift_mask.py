"""Swin's shifted-window attention mask: after a cyclic shift by `s`, a grid of `A x C` windows of `win x win` tokens
has rows (and columns) in three regions (those that stayed, the last window's rest, those wrapped round), and a
token attends only to tokens of its window in the same region (`-100` elsewhere, as Hugging Face writes it).

torch builds it from sizes only, so the importer sees a constant `[A, C, (1,) N, M]` table (`N = M = win * win`).
It is recognised by value, equal to the table computed here from the regions' definition (HF's construction: the
regions numbered on the grid by slices, cut into windows, compared pairwise) for a window size some configured dim
has and a shift `0 < s < win`, and written window by window as the language can hold it:

    gr[A, N] = arange(A) * win + arange(N) // win          # each token's row on the grid
    gc[C, N] = arange(C) * win + arange(N) % win           # and column
    region[A, C, N] = (cast(gr >= A * win - win) + cast(gr >= A * win - s)) * 3 + cast(gc >= ...) + cast(...)
    apart[A, C, N, M] = region - region[A, C, M]
    where(apart != 0, -100.0, 0.0)

which numbers the same regions (row region times 3 plus column region, so two tokens share a number exactly when
they share both) and compares them the same way, so the expression equals the captured table wherever the grid
and shift are those of the trace, which are configured sizes (the test rebuilds the model at them). `A`, `C`
are dims declared as the grid's size over the window (`h2 / window_size`); the mask then meets the scores by
position and is relabelled to their axes (`windows.align`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def shift_mask(rows: int, cols: int, win: int, shift: int) -> torch.Tensor:
    """`[rows, cols, win^2, win^2]`: 0 where two tokens of a window lie in one region after the shift, else -100."""
    img = torch.zeros(rows * win, cols * win)
    count = 0
    parts = (slice(0, -win), slice(-win, -shift), slice(-shift, None))
    for hs in parts:
        for ws in parts:
            img[hs, ws] = count
            count += 1
    windows = img.view(rows, win, cols, win).permute(0, 2, 1, 3).reshape(rows, cols, win * win)
    diff = windows[:, :, None, :] - windows[:, :, :, None]
    return torch.where(diff != 0, -100.0, 0.0)


def _recognised(lifter: Lifter, v: Any) -> tuple[str, int, int, int] | None:
    """(window dim, rows, cols, shift) when `v` (its size-1 dims dropped) is a shifted-window mask."""
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        return None
    big = [int(s) for s in v.shape if s != 1]
    if len(big) != 4 or big[2] != big[3]:
        return None
    win = round(big[2] ** 0.5)
    if win * win != big[2] or win < 2:
        return None
    dims = lifter.dims
    names = sorted((k for k in dims.ordered() if dims.values[k] == win and "layer" not in k and "head" not in k
                    and k not in dims.derived), key=lambda k: "window" not in k)
    if not names:
        return None
    flat = v.reshape(big)
    for shift in range(1, win):
        if torch.equal(flat, shift_mask(big[0], big[1], win, shift)):
            return names[0], big[0], big[1], shift
    return None


def _count_dim(lifter: Lifter, letter: str, count: int, win: str) -> str:
    """A dim for `count` windows along the grid's rows (`h`) or columns (`w`): `mh: h2 / window_size`, written
    with a configured grid size where one has it."""
    dims = lifter.dims
    made: dict[tuple[str, int], str] = lifter.__dict__.setdefault("mask_counts", {})
    if (letter, count) in made:
        return made[(letter, count)]
    grid = count * dims.values[win]
    sizes = sorted((k for k in dims.ordered() if dims.values[k] == grid and k not in dims.derived and "layer" not in k),
                   key=lambda k: not k.startswith(letter))
    name, k = f"m{letter}", 1
    while name in dims.values or name in dims.free.values() or name in dims.local:
        name, k = f"m{letter}_{k}", k + 1
    dims.values[name] = count
    dims.placed.add(name)
    dims.derived[name] = f"{sizes[0]} / {win}" if sizes else str(count)
    dims.used.update([name, win, *sizes[:1]])
    made[(letter, count)] = name
    return name


def lift_shift_mask(lifter: Lifter, n: fx.Node, v: Any) -> L | None:
    """The static node `n` of value `v` as the language's mask expression, or None when it is not one."""
    from nnspec.importer.relative_bias import _position_dims

    got = _recognised(lifter, v)
    if got is None:
        return None
    win, rows, cols, shift = got
    q, k = _position_dims(lifter, win, lifter.dims.values[win] ** 2)
    a, c = _count_dim(lifter, "h", rows, win), _count_dim(lifter, "w", cols, win)
    wv = lifter.dims.values[win]
    s = f"{win} // 2" if 2 * shift == wv else str(shift)
    scope, idx = lifter.scope_of(n), lifter.index[n]

    def bound(fmt: str, refs: list[L], names: list[str], hint: str, step: float) -> L:
        node = L(fmt, refs, [(x,) for x in names], names, scope, idx - 0.5 + step, atom=False, hint=hint, bind=True)
        node.annot = ", ".join(names)
        return node

    gr = bound(f"arange({a}) * {win} + arange({q}) // {win}", [], [a, q], "grid_row", 0.01)
    gc = bound(f"arange({c}) * {win} + arange({q}) % {win}", [], [c, q], "grid_col", 0.02)
    region = bound(f"(cast({{0}} >= {a} * {win} - {win}, \"int64\") + cast({{0}} >= {a} * {win} - {s}, \"int64\")) * 3"
                   f" + cast({{1}} >= {c} * {win} - {win}, \"int64\") + cast({{1}} >= {c} * {win} - {s}, \"int64\")",
                   [gr, gc], [a, c, q], "region", 0.03)
    keys = L(f"{{0}}[{a}, {c}, {k}]", [region], [(a,), (c,), (k,)], [a, c, k], scope, idx - 0.5 + 0.035,
             hint="region")
    apart = bound("{0} - {1}", [region, keys], [a, c, q, k], "apart", 0.04)
    axes: list[tuple[str, ...]] = []
    it = iter([a, c, q, k])
    for size in v.shape:
        axes.append(() if size == 1 else (next(it),))
    return L("where({0} != 0, -100.0, 0.0)", [apart], axes, [a, c, q, k], scope, idx, atom=True, hint="mask")
