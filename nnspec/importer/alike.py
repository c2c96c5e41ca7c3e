"""Two calls of one block (or two layers of a module list) compared value by value, for a first call that passes
one value to several of the block's parameters.

`repeat(2, gate, x, x)` calls `gate(x, x)` first and `gate(h1, x)` next: the first call reads one value where the
block has two parameters, so it renders as a block of one parameter and cannot be compared with the second call by
text. Its lifted values are compared with the second call's instead, walking both from their results: each pair
must be written alike (same expression, axes, nesting of child blocks), and where the second call reads a
parameter, the first reads the value that parameter stands for in it. That mapping must send every parameter but
the carried one to the very value the later calls read (repeat's extra arguments, the same on every iteration),
and the carried one to the first call's input. Then the first call computes what the block of the second computes
with `(init, *extras)`, so the group is `repeat(N, block, init, *extras)`.
"""

from __future__ import annotations

from typing import Any

from nnspec.importer.graph import L

# `render.Renderer` (typed `Any`: `render` imports this module)


def _written_alike(r: Any, x: L, a: str, y: L, b: str) -> bool:
    """`x` (in call scope a) and `y` (in call scope b) are the same expression at the same place in their calls."""
    return (x.fmt == y.fmt and x.axes == y.axes and x.order == y.order and x.annot == y.annot
            and len(x.refs) == len(y.refs) and len(x.names) == len(y.names)
            and (x.member is None) == (y.member is None) and (x.member is None or x.member[1] == y.member[1])
            and x.scope[len(a):] == y.scope[len(b):] and getattr(x, "scan_body", None) is None
            and getattr(y, "scan_body", None) is None)


def slots(r: Any, a: str, b: str) -> dict[int, L] | None:
    """For each parameter of call `b` (by position), the value call `a` reads in its place; None when the two
    calls compute differently."""
    outs_a, outs_b = r.outs(a), r.outs(b)
    if len(outs_a) != len(outs_b):
        return None
    params = r.params_of(b)
    where = {id(p): j for j, p in enumerate(params)}
    got: dict[int, L] = {}
    paired: dict[int, L] = {}
    stack = list(zip(outs_a, outs_b, strict=True))
    while stack:
        x, y = stack.pop()
        if not r.within(y, b):
            j = where.get(id(y))
            if j is None or r.within(x, a) or got.setdefault(j, x) is not x:
                return None
            continue
        if not r.within(x, a):
            return None
        if id(y) in paired:
            if paired[id(y)] is not x:
                return None
            continue
        paired[id(y)] = x
        if not _written_alike(r, x, a, y, b):
            return None
        stack.extend(zip(x.refs, y.refs, strict=True))
        if x.member is not None and y.member is not None:
            stack.append((x.member[0], y.member[0]))
    return got if len(got) == len(params) else None


def passed_twice(r: Any, group: list[str]) -> L | None:
    """The first call's carried input when the group's first call is the later calls' block applied to it and the
    same extra arguments (one value possibly feeding several parameters); else None."""
    first, second = group[0], group[1]
    params = r.params_of(second)
    outs = r.outs(first)
    if not params or len(outs) != 1 or params[0] is not outs[0] or not r._chains(group[1:]):
        return None
    got = slots(r, first, second)
    if got is None or any(got[j] is not params[j] for j in range(1, len(params))):
        return None
    return got[0]
