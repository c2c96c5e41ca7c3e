"""Indexing along named axes: top-k, sort, gather, scatter, cumulative sums, concatenation, stacking and slices."""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.ir import Axis, DType, TensorType, Type
from nnspec.compiler.ops.nn import unique_axes
from nnspec.compiler.ops.registry import find_axis, need_same_size, op, promote, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


def _replace(t: TensorType, name: str, new: Axis, dtype: DType | None = None) -> TensorType:
    return TensorType(unique_axes(tuple(new if a.name == name else a for a in t.axes), "this op"), dtype or t.dtype)


@op("topk", "reduce", doc="The `k` largest values along axis `axis` and their indices, as a tuple; the axis is "
    "replaced by `into` (size k).", attrs={"axis": str, "k": int, "into": Axis}, arity=1, glyph="top-k")
def _topk(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "topk")
    if x.dtype == DType.bool:  # torch.topk has no bool kernel
        raise SpecError("E013", f"topk of a bool tensor {x}; cast it first")
    i = find_axis(x, attrs["axis"], "topk")
    n = sizes.value(x.axes[i].size)
    if attrs["k"] < 1 or (n is not None and attrs["k"] > n):
        raise SpecError("E012", f"topk: k={attrs['k']} must be between 1 and the size of {attrs['axis']} ({n})")
    values = _replace(x, attrs["axis"], attrs["into"])
    return (values, values.with_dtype(DType.int64))


@op("sort", "reduce", doc="Sort along axis `axis` (`descending` or not): a tuple of values and int64 indices.",
    attrs={"axis": str, "descending": bool}, arity=1, glyph="sort")
def _sort(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "sort")
    find_axis(x, attrs["axis"], "sort")
    return (x, x.with_dtype(DType.int64))


@op("gather", "shape", doc="`y[..., j, ...] = x[..., idx[..., j, ...], ...]` along axis `axis` of x; idx has x's "
    "axes with `axis` replaced by its own axis, and y has idx's axes.", attrs={"axis": str}, arity=2, glyph="gather")
def _gather(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x, idx = tensor(ins[0], "gather"), tensor(ins[1], "gather indices")
    if not idx.dtype.is_int:
        raise SpecError("E013", f"gather indices must be integers, got {idx}")
    i = find_axis(x, attrs["axis"], "gather")
    _check_index_axes(x, idx, i, sizes, "gather")
    return TensorType(idx.axes, x.dtype)


def _check_index_axes(x: TensorType, idx: TensorType, i: int, sizes: Sizes, what: str) -> None:
    if idx.rank != x.rank:
        raise SpecError("E018", f"{what}: indices {idx} must have x's axes with {x.axes[i].name} replaced by one axis")
    for j, (a, b) in enumerate(zip(x.axes, idx.axes, strict=True)):
        if j == i:
            continue
        if a.name != b.name:
            raise SpecError("E017", f"{what}: indices axis {j} is {b.name}, x has {a.name} there")
        need_same_size(sizes, a.size, b.size, f"{what}: axis {a.name} differs between x and indices")


@op("scatter", "shape", doc="x with `x[..., idx[..., j, ...], ...] = src[..., j, ...]` along axis `axis` "
    "(`reduce`: 'set' or 'add').", attrs={"axis": str, "reduce": str}, arity=3, glyph="scatter",
    flops=lambda ins, out, attrs: tensor(ins[2], "src").numel(), flops_doc="1 per source element")
def _scatter(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x, idx, src = (tensor(t, "scatter") for t in ins)
    if not idx.dtype.is_int:
        raise SpecError("E013", f"scatter indices must be integers, got {idx}")
    if attrs["reduce"] not in ("set", "add"):
        raise SpecError("E015", f"scatter reduce must be 'set' or 'add', got {attrs['reduce']!r}")
    i = find_axis(x, attrs["axis"], "scatter")
    _check_index_axes(x, idx, i, sizes, "scatter")
    if src.names != idx.names:
        raise SpecError("E017", f"scatter: source {src} must have the indices' axes {idx.names}")
    return TensorType(x.axes, promote(x.dtype, src.dtype))


@op("cumsum", "reduce", doc="Inclusive cumulative sum along axis `axis`.", attrs={"axis": str}, arity=1, glyph="Σ…",
    flops=lambda ins, out, attrs: tensor(out, "y").numel(), flops_doc="1 per element", traits=("keeps_float32",))
def _cumsum(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "cumsum")
    find_axis(x, attrs["axis"], "cumsum")
    if x.dtype == DType.bool:
        raise SpecError("E013", "cumsum of a bool tensor; cast it first")
    return x.with_dtype(DType.int64) if x.dtype.is_int else x  # torch.cumsum of integers gives int64


def concat_reference(types: list[TensorType], axis: str) -> TensorType | None:
    """The operand whose axes (and their order) the result takes: of those with `axis`, the first of highest rank,
    so `concat(registers[R, d], x[B, T, d], ...)` broadcasts the registers over B. Every backend uses this."""
    having = [t for t in types if axis in t.names]
    return max(having, key=lambda t: t.rank) if having else None


@op("concat", "shape", doc="Join tensors along axis `axis`, which becomes `into`. Operands align by axis name with "
    "the first of highest rank that has `axis`; an operand lacking an axis is broadcast over it (lacking `axis` "
    "itself, it contributes one entry, as a class token does).", attrs={"axis": str, "into": Axis}, arity=(1, 64),
    glyph="⊕")
def _concat(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    ts = [tensor(t, "concat") for t in ins]
    ref = concat_reference(ts, attrs["axis"])
    if ref is None:
        raise SpecError("E017", f"concat: no operand has axis '{attrs['axis']}'")
    total: sympy.Expr = sympy.Integer(0)
    for t in ts:
        for a in t.axes:
            if a.name not in ref.names:
                raise SpecError("E017", f"concat: operand {t} has axis {a.name}, which {ref} lacks")
            if a.name != attrs["axis"]:
                need_same_size(sizes, ref.axis(a.name).size, a.size,  # type: ignore[union-attr]
                               f"concat: axis {a.name} differs between operands")
        if t.dtype != ref.dtype:
            raise SpecError("E013", f"concat: dtypes differ ({ref.dtype} and {t.dtype})")
        total += t.axis(attrs["axis"]).size if attrs["axis"] in t.names else 1  # type: ignore[union-attr]
    need_same_size(sizes, attrs["into"].size, total,
                   f"concat: the result has {sizes.describe(total)} entries along {attrs['axis']}, but "
                   f"{attrs['into'].name} is {sizes.describe(attrs['into'].size)}")
    return _replace(ref, attrs["axis"], attrs["into"])


def stack_reference(types: list[TensorType]) -> TensorType:
    """The operand whose axes (and their order) follow the new axis in a stack's result: the first of highest rank,
    as for concat. Every backend uses this."""
    return max(types, key=lambda t: t.rank)


@op("stack", "shape", doc="Stack tensors along a new leading axis `into`, whose size is the number of operands "
    "(entry i is operand i). Operands align by axis name with the first of highest rank; an operand lacking one of "
    "its axes is broadcast over it.", attrs={"into": Axis}, arity=(1, 64), glyph="stack")
def _stack(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    ts = [tensor(t, "stack") for t in ins]
    ref = stack_reference(ts)
    into = attrs["into"]
    if into.name in ref.names:
        raise SpecError("E017", f"stack: the new axis '{into.name}' is already an axis of {ref}; name it anew")
    for t in ts:
        for a in t.axes:
            if a.name not in ref.names:
                raise SpecError("E017", f"stack: operand {t} has axis {a.name}, which {ref} lacks")
            need_same_size(sizes, ref.axis(a.name).size, a.size,  # type: ignore[union-attr]
                           f"stack: axis {a.name} differs between operands")
        if t.dtype != ref.dtype:
            raise SpecError("E013", f"stack: dtypes differ ({ref.dtype} and {t.dtype})")
    need_same_size(sizes, into.size, sympy.Integer(len(ts)),
                   f"stack: the result has {len(ts)} entries along {into.name}, but {into.name} is "
                   f"{sizes.describe(into.size)}")
    return TensorType((into, *ref.axes), ref.dtype)


@op("slice", "shape", doc="Elements `start:stop:step` along axis `axis`, which becomes `into`.",
    attrs={"axis": str, "start": int, "stop": int, "step": int, "into": Axis}, arity=1, glyph="[a:b]", traits=("view",))
def _slice(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "slice")
    i = find_axis(x, attrs["axis"], "slice")
    n = sizes.value(x.axes[i].size)
    start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
    if step < 1 or start < 0 or stop < start or (n is not None and stop > n):
        raise SpecError("E012", f"slice {start}:{stop}:{step} does not fit axis {attrs['axis']} of size {n}")
    return _replace(x, attrs["axis"], attrs["into"])
