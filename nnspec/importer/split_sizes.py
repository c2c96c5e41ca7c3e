"""`torch.split(x, [r, n, n], dim)` (`aten.split_with_sizes`) as the slices it is made of.

Hugging Face Mamba splits its `x_proj` output into the step sizes' low-rank input, B and C this way, where nnspec's
generated code slices (`slices.py`); each part is the slice of its range of the axis, `slice(x, over=AX,
start=time_step_rank, stop=time_step_rank + state_size, into=state_size)`, its bounds written with the dims they
are made of. Parts of a free axis (batch, sequence) are refused as a slice of one is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

from nnspec.importer.graph import L
from nnspec.importer.slices import piece

if TYPE_CHECKING:
    from nnspec.importer.lift import Lifter


def lift_split_sizes(lifter: Lifter, n: fx.Node) -> list[L]:
    x = lifter.lift(n.args[0])
    sizes, dim = n.args[1], n.args[2] if len(n.args) > 2 else 0
    if not isinstance(x, L) or not all(isinstance(s, int) for s in sizes):
        raise lifter.fail(n, "a split into parts of sizes computed at run time, or of a value that is not a tensor")
    parts, start = [], 0
    for size in sizes:
        parts.append(piece(lifter, n, x, n.args[0], dim, start, start + size, 1))
        start += size
    return parts


HANDLERS: dict[str, Any] = {"aten.split_with_sizes.default": lift_split_sizes}
