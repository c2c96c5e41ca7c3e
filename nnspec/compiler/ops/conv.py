"""Convolution and pooling over named spatial axes.

A convolution maps its `channel` axis to a new channel axis and each spatial axis n to
floor((n + 2·padding - kernel) / stride) + 1; every other axis is batch.
"""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.ir import Axis, TensorType, Type
from nnspec.compiler.ops.nn import unique_axes
from nnspec.compiler.ops.registry import find_axis, need_float, need_same_dtype, need_same_size, op, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


def out_size(n: sympy.Expr, kernel: int, stride: int, padding: int) -> sympy.Expr:
    return sympy.floor((n + 2 * padding - kernel) / stride) + 1


def _check_window(x: TensorType, attrs: dict[str, Any], sizes: Sizes, what: str) -> None:
    spatial = attrs["spatial"]
    for key in ("kernel", "stride", "padding"):
        if len(attrs[key]) != len(spatial):
            raise SpecError("E019", f"{what}: {key} has {len(attrs[key])} values for {len(spatial)} spatial axes")
    if not 1 <= len(spatial) <= 3:
        raise SpecError("E019", f"{what} works over 1 to 3 spatial axes, got {len(spatial)}")
    for name, k, s, p, o in zip(spatial, attrs["kernel"], attrs["stride"], attrs["padding"], attrs["out_axes"],
                                strict=True):
        n = x.axes[find_axis(x, name, what)].size
        if k < 1 or s < 1 or p < 0:
            raise SpecError("E015", f"{what}: kernel and stride must be >= 1 and padding >= 0")
        need_same_size(sizes, o.size, out_size(n, k, s, p), f"{what}: output axis {o.name} has the wrong size")
        value = sizes.value(o.size)
        if value is not None and value < 1:
            raise SpecError("E012", f"{what}: axis {name} is smaller than the kernel ({k})")


def _conv_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    w = tensor(ins[1], "w")
    return 2 * tensor(out, "y").numel() * sympy.Mul(*w.sizes[1:]) + (tensor(out, "y").numel() if len(ins) == 3 else 0)


@op("conv", "nn", doc="Convolution: weight `[out, in, *kernel]`, over axes `spatial` with `stride`/`padding`; "
    "axis `channel` becomes the weight's `out` axis, spatial axes become `out_axes`.",
    attrs={"channel": str, "spatial": tuple, "kernel": tuple, "stride": tuple, "padding": tuple, "out_axes": tuple},
    arity=(2, 3), glyph="★", flops=_conv_flops, flops_doc="2·numel(y)·in·prod(kernel) (+ numel(y) with bias)",
    traits=("matmul",))
def _conv(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x, w = tensor(ins[0], "conv"), tensor(ins[1], "conv weight")
    need_float(x, "conv")
    need_same_dtype([tensor(t, "conv") for t in ins], "conv (input, weight, bias)")
    c = find_axis(x, attrs["channel"], "conv")
    _check_window(x, attrs, sizes, "conv")
    need_same_size(sizes, x.axes[c].size, w.axes[1].size,
                   f"conv expects {sizes.describe(w.axes[1].size)} input channels on axis {x.axes[c].name}, "
                   f"got {sizes.describe(x.axes[c].size)}")
    if tuple(int(sizes.concrete(s)) for s in w.sizes[2:]) != tuple(attrs["kernel"]):
        raise SpecError("E012", f"conv weight {w} does not match kernel {attrs['kernel']}")
    mapping = {attrs["channel"]: w.axes[0], **dict(zip(attrs["spatial"], attrs["out_axes"], strict=True))}
    return TensorType(unique_axes(tuple(mapping.get(a.name, a) for a in x.axes), "conv"), x.dtype)


@op("pool", "reduce", doc="Max or average pooling (`kind`) over axes `spatial` with `kernel`, `stride`, `padding`.",
    attrs={"kind": str, "spatial": tuple, "kernel": tuple, "stride": tuple, "padding": tuple, "out_axes": tuple},
    arity=1, glyph="pool", flops=lambda ins, out, attrs: tensor(ins[0], "x").numel(), flops_doc="1 per input element")
def _pool(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "pool")
    need_float(x, "pool")
    if attrs["kind"] not in ("max", "avg"):
        raise SpecError("E015", f"pool kind must be 'max' or 'avg', got {attrs['kind']!r}")
    _check_window(x, attrs, sizes, "pool")
    mapping: dict[str, Axis] = dict(zip(attrs["spatial"], attrs["out_axes"], strict=True))
    return TensorType(unique_axes(tuple(mapping.get(a.name, a) for a in x.axes), "pool"), x.dtype)
