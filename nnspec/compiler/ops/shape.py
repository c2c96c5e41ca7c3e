"""Ops that move, relabel or index axes without arithmetic, and the index-valued sources."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.ir import Axis, DType, TensorType, Type
from nnspec.compiler.ops.nn import unique_axes
from nnspec.compiler.ops.registry import find_axis, need_same_size, op, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


@op("rearrange", "shape", doc="Permute axes by `perm`, then view the result with axes `axes` (same element "
    "count): relabels, transposes, splits and merges. No arithmetic.", attrs={"perm": tuple, "axes": tuple},
    arity=1, glyph="⤨", traits=("view",))
def _rearrange(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "rearrange")
    perm, axes = attrs["perm"], attrs["axes"]
    if sorted(perm) != list(range(x.rank)):
        raise SpecError("E018", f"rearrange permutation {perm} does not fit {x}")
    out = TensorType(unique_axes(tuple(axes), "rearrange"), x.dtype)
    need_same_size(sizes, x.numel(), out.numel(),
                   f"cannot view {x} ({x.shape_str()}) as {out} ({out.shape_str()}): element counts differ")
    return out


@op("select", "shape", doc="Take index `index` along axis `axis`, removing it.", attrs={"axis": str, "index": int},
    arity=1, glyph="[i]", traits=("view",))
def _select(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "select")
    i = find_axis(x, attrs["axis"], "select")
    n = sizes.value(x.axes[i].size)
    if n is not None and not 0 <= attrs["index"] < n:
        raise SpecError("E012", f"index {attrs['index']} is out of range for axis {x.axes[i].name} of size {n}")
    return TensorType(x.axes[:i] + x.axes[i + 1:], x.dtype)


@op("arange", "source", doc="`int64[axis]` holding 0, 1, ..., size-1.", attrs={"axis": Axis}, arity=0, glyph="0..n",
    traits=("source",))
def _arange(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    return TensorType((attrs["axis"],), DType.int64)


@op("causal_mask", "source", doc="`bool[q, k]`: true where the key index is at most the query index "
    "(`k <= q`, aligned at the start).", attrs={"q": Axis, "k": Axis}, arity=0, glyph="◣", traits=("source",))
def _causal_mask(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    q, k = attrs["q"], attrs["k"]
    if q.name == k.name:
        raise SpecError("E017", f"causal_mask needs two different axes, got {q.name} twice")
    return TensorType((q, k), DType.bool)


@op("full", "source", doc="A tensor of axes `axes` filled with `value`.",
    attrs={"axes": tuple, "value": (int, float, bool), "dtype": DType}, arity=0, glyph="c",
    traits=("source", "float_source"))
def _full(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    return TensorType(unique_axes(tuple(attrs["axes"]), "full"), attrs["dtype"])
