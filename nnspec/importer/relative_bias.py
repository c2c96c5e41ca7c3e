"""Swin's relative position bias: a learned table of `(2 win - 1)^2` rows, one per relative offset `(dr, dc)` of two
tokens of a `win x win` window, looked up with a constant index table `offset[N, M]` over the window's query and
key positions (`N = M = win * win`).

The index table is a function of the window size only; torch computes it once (a buffer, or `arange` arithmetic in
forward) and the importer sees a constant. It is recognised by value: equal to the table computed here from the
offsets' definition, for a window size some configured dim has (`window_size`), and written as the language
builds it (examples/swin.yaml):

    offset[N, M] = (arange(N) // win - arange(M) // win + win - 1) * (2 * win - 1) + arange(N) % win
                   - arange(M) % win + win - 1
    embedding(offset, (2 * win - 1) * (2 * win - 1), heads, name=relative_position_bias)

which is sound because the written expression is the very definition the captured table was compared with, and
the lookup is the language's `embedding` (checked against the module's output by `leaves.lift_leaf`). `N` and `M`
are declared dims (`win * win`) so that `arange` can count them; the bias later meets the windowed scores by
position and is relabelled to their axes (`windows.align`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from nnspec.importer.graph import L

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def relative_index(win: int) -> torch.Tensor:
    """`[win^2, win^2]`: row `i` (query), column `j` (key), `(dr + win - 1) * (2 win - 1) + dc + win - 1` with `dr`,
    `dc` the row and column offsets of tokens `i` and `j` in a window stored row by row."""
    pos = torch.arange(win * win)
    dr = (pos // win)[:, None] - (pos // win)[None, :]
    dc = (pos % win)[:, None] - (pos % win)[None, :]
    return (dr + win - 1) * (2 * win - 1) + dc + win - 1


def window_dim(lifter: Lifter, table: Any) -> str | None:
    """The configured dim whose window the constant `table` indexes (its value equals `relative_index`), if any: one
    spelled with `window` first, else any dim of that size."""
    if not isinstance(table, torch.Tensor) or table.dtype not in (torch.int64, torch.int32) or table.dim() != 2 \
            or table.shape[0] != table.shape[1]:
        return None
    n = int(table.shape[0])
    win = round(n ** 0.5)
    if win < 1 or win * win != n or not torch.equal(table.long(), relative_index(win)):
        return None
    dims = lifter.dims
    names = [k for k in dims.ordered() if dims.values[k] == win and "layer" not in k and "head" not in k]
    names.sort(key=lambda k: "window" not in k)
    return names[0] if names else None


def _position_dims(lifter: Lifter, win_name: str, n: int) -> tuple[str, str]:
    """Two dims of `win * win` positions (queries `N`, keys `M`), declared once per window dim."""
    dims = lifter.dims
    made: dict[str, tuple[str, str]] = lifter.__dict__.setdefault("relative_dims", {})
    if win_name in made:
        return made[win_name]
    taken = set(dims.values) | set(dims.free.values()) | set(dims.local) | set(dims.aliases)
    out: list[str] = []
    for base in ("N", "M"):
        name, k = base, 1
        while name in taken or name in out:
            name, k = f"{base}_{k}", k + 1
        out.append(name)
        dims.values[name] = n
        dims.placed.add(name)
        dims.derived[name] = f"{win_name} * {win_name}"
        dims.used.add(name)
    dims.used.add(win_name)
    made[win_name] = (out[0], out[1])
    return made[win_name]


def lift_relative_bias(lifter: Lifter, path: str, n: fx.Node, mod: Any, table: Any) -> L | None:
    """The Embedding at `path` looked up with Swin's constant relative index `table` (`patterns.Static`), as the
    language's offset expression and `embedding`; None when the table is some other constant."""
    value = getattr(table, "value", None)
    win = window_dim(lifter, value)
    if win is None:
        return None
    q, k = _position_dims(lifter, win, int(value.shape[0]))
    scope, idx = lifter.scope_of(n), lifter.index[n]
    expr = (f"(arange({q}) // {win} - arange({k}) // {win} + {win} - 1) * (2 * {win} - 1) + arange({q}) % {win} "
            f"- arange({k}) % {win} + {win} - 1")
    offset = L(expr, [], [(q,), (k,)], [q, k], scope, idx - 0.5, atom=False, hint="offset", bind=True)
    offset.annot = f"{q}, {k}"
    heads = lifter.dims.expr(int(mod.weight.shape[1]))
    out = lifter.dims.axis(int(mod.weight.shape[1]))
    name = path.rsplit(".", 1)[-1]
    lifter.leaf_calls.append((path, "embedding"))
    return L(f"embedding({{0}}, (2 * {win} - 1) * (2 * {win} - 1), {heads}, name={name})", [offset],
             [(q,), (k,), (out,)], [q, k, out], scope, idx, hint=name)
