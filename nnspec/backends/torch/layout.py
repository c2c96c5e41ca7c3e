"""Named axes as positions, for both sides of an op rule: on tensors while the interpreter runs (`*_tensor`,
`input_types`), and as code for the emitters, where the permutes, `None`-indexing and dim numbers are worked out
from the IR types at compile time, never at run time. Both sides align operands the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.lazy import torch
from nnspec.backends.torch.pysrc import Expr, Lit, Slice, method
from nnspec.compiler.ir import DType, Node, TensorType


# ---- on tensors (the interpreter) ----
def input_types(frame: Frame, node: Node) -> list[TensorType]:
    return [frame.graph[i].type for i in node.inputs]  # type: ignore[misc]


def axis_dim(frame: Frame, node: Node) -> int:
    """The position of the op's `axis` attribute in its first input."""
    return input_types(frame, node)[0].index(node.attrs["axis"])


def align_tensor(x: torch.Tensor, t: TensorType, names: tuple[str, ...]) -> torch.Tensor:
    """View `x` (axes `t.names`) with axes ordered as in `names`, size-1 where it lacks one."""
    present = [n for n in names if n in t.names]
    if list(present) != list(t.names):
        x = x.permute([t.names.index(n) for n in present])
    shape = []
    it = iter(x.shape)
    for n in names:
        shape.append(next(it) if n in t.names else 1)
    return x.reshape(shape) if len(shape) != x.dim() else x


def on_last_tensor(frame: Frame, node: Node, x: torch.Tensor,
                   fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply `fn` with the op's axis moved last (torch's norms and linear act on the last axis)."""
    i = axis_dim(frame, node)
    last = i == x.dim() - 1
    y = fn(x if last else x.movedim(i, -1))
    return y if last else y.movedim(-1, i)


# ---- as code (the emitters) ----
def dim(t: TensorType, name: str) -> int:
    """The positional dim of axis `name`; -1 for the last, as people write it."""
    i = t.index(name)
    return -1 if i == t.rank - 1 else i


def permute(x: Expr, perm: list[int] | tuple[int, ...]) -> Expr:
    perm = list(perm)
    moved = [i for i, p in enumerate(perm) if p != i]
    if not moved:
        return x
    if len(moved) == 2:
        return method(x, "transpose", *moved)
    return method(x, "permute", *perm)


def align(x: Expr, t: TensorType, names: tuple[str, ...], full: bool = False) -> Expr:
    """`x` (axes `t.names`) viewed with axes in the order of `names`, size 1 where it has none; leading
    missing axes are left to broadcasting unless `full`. Same values as `align_tensor`."""
    if t.rank == 0 and not full:
        return x
    present = [n for n in names if n in t.names]
    x = permute(x, [t.index(n) for n in present])
    start = 0 if full or not present else names.index(present[0])
    items: list[Expr] = [Slice() if n in t.names else Lit(None) for n in names[start:]]
    while items and items[-1] == Slice():
        items.pop()
    return P.Index(x, tuple(items)) if items else x


def on_last(x: Expr, t: TensorType, axis: str, fn: Callable[[Expr], Expr]) -> Expr:
    """Apply `fn` (which works on the last dim, as torch's linear and norms do) along `axis`."""
    i = t.index(axis)
    if i == t.rank - 1:
        return fn(x)
    return method(fn(method(x, "movedim", i, -1)), "movedim", -1, i)


def cast_to(fn: FunctionGen, x: Expr, got: DType, want: DType) -> Expr:
    """`x`, whose torch dtype is `got` (`promotion.py`), as `want`."""
    return x if got == want else method(x, "to", fn.dtype(want))
