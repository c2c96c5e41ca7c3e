"""Convolution, transposed convolution, pooling and interpolation over named spatial axes.

A convolution maps its `channel` axis to a new channel axis and each spatial axis n to
floor((n + 2·padding - kernel) / stride) + 1; a transposed convolution (the gradient of one) maps n to
(n - 1)·stride - 2·padding + kernel + output_padding; every other axis is batch. With `groups` g, the channels
split into g groups and each output group sees only its input group (depthwise: g = input channels).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import sympy

from nnspec.compiler.ir import Axis, TensorType, Type
from nnspec.compiler.ops.nn import unique_axes
from nnspec.compiler.ops.registry import find_axis, need_float, need_same_dtype, need_same_size, op, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


def out_size(n: sympy.Expr, kernel: int, stride: int, padding: int) -> sympy.Expr:
    return sympy.floor((n + 2 * padding - kernel) / stride) + 1


def transposed_out_size(n: sympy.Expr, kernel: int, stride: int, padding: int, output_padding: int) -> sympy.Expr:
    """torch's ConvTranspose size (dilation 1): the input size a convolution with these settings maps onto n, with
    `output_padding` of the positions a strided convolution would have dropped added back at the end."""
    return (n - 1) * stride - 2 * padding + kernel + output_padding


def check_groups(sizes: Sizes, channels: list[Axis], groups: int, what: str) -> None:
    """Each channel count must split into `groups` equal groups (a free size becomes a run-time guard)."""
    if groups < 1:
        raise SpecError("E015", f"{what}: groups must be >= 1, got {groups}")
    for axis in channels:
        n = sizes.value(axis.size)
        if n is not None and n % groups:
            raise SpecError("E014", f"{what}: {n} channels on axis {axis.name} do not split into {groups} groups "
                            f"({n}/{groups} = {n / groups:.4g})")
        if n is None and groups > 1:
            sizes.assume(sympy.Eq(sympy.Mod(axis.size, groups), 0), f"{axis.size} % {groups} == 0")


def _check_window(x: TensorType, attrs: dict[str, Any], sizes: Sizes, what: str) -> None:
    spatial = attrs["spatial"]
    transposed = "output_padding" in attrs
    keys = ("kernel", "stride", "padding", "output_padding") if transposed else ("kernel", "stride", "padding")
    for key in keys:
        if len(attrs[key]) != len(spatial):
            raise SpecError("E019", f"{what}: {key} has {len(attrs[key])} values for {len(spatial)} spatial axes")
    if not 1 <= len(spatial) <= 3:
        raise SpecError("E019", f"{what} works over 1 to 3 spatial axes, got {len(spatial)}")
    extra = attrs["output_padding"] if transposed else (0,) * len(spatial)
    for name, k, s, p, e, o in zip(spatial, attrs["kernel"], attrs["stride"], attrs["padding"], extra,
                                   attrs["out_axes"], strict=True):
        n = x.axes[find_axis(x, name, what)].size
        if k < 1 or s < 1 or p < 0:
            raise SpecError("E015", f"{what}: kernel and stride must be >= 1 and padding >= 0")
        if not 0 <= e < s:
            raise SpecError("E015", f"{what}: output_padding must be >= 0 and smaller than the stride ({s}), got {e}")
        want = transposed_out_size(n, k, s, p, e) if transposed else out_size(n, k, s, p)
        need_same_size(sizes, o.size, want, f"{what}: output axis {o.name} has the wrong size")
        value = sizes.value(o.size)
        if value is not None and value < 1:
            raise SpecError("E012", f"{what}: axis {o.name} would be empty ({value}): padding {p} takes more than "
                            "the output has" if transposed else f"{what}: axis {name} is smaller than the kernel ({k})")


def _conv_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    w = tensor(ins[1], "w")
    return 2 * tensor(out, "y").numel() * sympy.Mul(*w.sizes[1:]) + (tensor(out, "y").numel() if len(ins) == 3 else 0)


@op("conv", "nn", doc="Convolution: weight `[out, in/groups, *kernel]`, over axes `spatial` with `stride`/`padding`; "
    "axis `channel` becomes the weight's `out` axis, spatial axes become `out_axes`. With `groups` g (default 1) "
    "the channels split into g groups, output group i seeing only input group i (depthwise: g = in).",
    attrs={"channel": str, "spatial": tuple, "kernel": tuple, "stride": tuple, "padding": tuple, "out_axes": tuple,
           "groups": int}, optional=("groups",),
    arity=(2, 3), glyph="★", flops=_conv_flops, flops_doc="2·numel(y)·(in/groups)·prod(kernel) (+ numel(y) with bias)",
    traits=("matmul",))
def _conv(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x, w = tensor(ins[0], "conv"), tensor(ins[1], "conv weight")
    need_float(x, "conv")
    need_same_dtype([tensor(t, "conv") for t in ins], "conv (input, weight, bias)")
    c = find_axis(x, attrs["channel"], "conv")
    _check_window(x, attrs, sizes, "conv")
    groups = attrs.get("groups", 1)
    check_groups(sizes, [x.axes[c], w.axes[0]], groups, "conv")
    need_same_size(sizes, x.axes[c].size, w.axes[1].size * groups,
                   f"conv expects {sizes.describe(w.axes[1].size * groups)} input channels on axis {x.axes[c].name}, "
                   f"got {sizes.describe(x.axes[c].size)}")
    if tuple(int(sizes.concrete(s)) for s in w.sizes[2:]) != tuple(attrs["kernel"]):
        raise SpecError("E012", f"conv weight {w} does not match kernel {attrs['kernel']}")
    mapping = {attrs["channel"]: w.axes[0], **dict(zip(attrs["spatial"], attrs["out_axes"], strict=True))}
    return TensorType(unique_axes(tuple(mapping.get(a.name, a) for a in x.axes), "conv"), x.dtype)


def _conv_transpose_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    """Each input element meets every weight of its group: in·(out/groups)·prod(kernel) multiply-adds per
    position (some land in the padding and are cropped; they are computed all the same)."""
    x, w = tensor(ins[0], "x"), tensor(ins[1], "w")
    return 2 * x.numel() * sympy.Mul(*w.sizes[1:]) + (tensor(out, "y").numel() if len(ins) == 3 else 0)


@op("conv_transpose", "nn", doc="Transposed convolution (the gradient of `conv` with respect to its input, as torch's "
    "ConvTransposeNd): weight `[in, out/groups, *kernel]`; each spatial axis n becomes `(n - 1)·stride - "
    "2·padding + kernel + output_padding`; axis `channel` becomes `out_channel` (out = weight's second size · "
    "groups).", attrs={"channel": str, "out_channel": str, "spatial": tuple, "kernel": tuple, "stride": tuple,
                       "padding": tuple, "output_padding": tuple, "out_axes": tuple, "groups": int},
    arity=(2, 3), glyph="☆", flops=_conv_transpose_flops,
    flops_doc="2·numel(x)·(out/groups)·prod(kernel) (+ numel(y) with bias)", traits=("matmul",))
def _conv_transpose(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x, w = tensor(ins[0], "conv_transpose"), tensor(ins[1], "conv_transpose weight")
    need_float(x, "conv_transpose")
    need_same_dtype([tensor(t, "conv_transpose") for t in ins], "conv_transpose (input, weight, bias)")
    c = find_axis(x, attrs["channel"], "conv_transpose")
    _check_window(x, attrs, sizes, "conv_transpose")
    groups = attrs["groups"]
    check_groups(sizes, [x.axes[c]], groups, "conv_transpose")
    need_same_size(sizes, x.axes[c].size, w.axes[0].size,
                   f"conv_transpose expects {sizes.describe(w.axes[0].size)} input channels on axis "
                   f"{x.axes[c].name}, got {sizes.describe(x.axes[c].size)}")
    if tuple(int(sizes.concrete(s)) for s in w.sizes[2:]) != tuple(attrs["kernel"]):
        raise SpecError("E012", f"conv_transpose weight {w} does not match kernel {attrs['kernel']}")
    out = Axis(attrs["out_channel"], w.axes[1].size * groups)
    if len(ins) == 3 and tensor(ins[2], "conv_transpose bias").axes != (out,):
        raise SpecError("E012", f"conv_transpose bias must be [{out.name}], got {ins[2]}")
    mapping = {attrs["channel"]: out, **dict(zip(attrs["spatial"], attrs["out_axes"], strict=True))}
    return TensorType(unique_axes(tuple(mapping.get(a.name, a) for a in x.axes), "conv_transpose"), x.dtype)


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


INTERPOLATE_MODES = {"nearest": (1, 2, 3), "linear": (1,), "bilinear": (2,), "trilinear": (3,)}  # mode -> axis counts


def scaled_size(sizes: Sizes, n: sympy.Expr, scale: float) -> sympy.Expr:
    """torch's size for `scale_factor`: floor(n·scale) computed in double precision. For a known n, exactly that;
    for a free n, floor(n·scale) with the float's exact value, which equals the double product when the scale
    has a short binary fraction (`exact_scale`); the frontend refuses other scales on free axes."""
    value = sizes.value(n)
    if value is not None:
        return sympy.Integer(math.floor(float(value) * scale))
    return sympy.floor(n * sympy.Rational(scale))


def exact_scale(scale: float) -> bool:
    """n·scale is exact in double precision for every size n < 2^32: at most 20 significant bits."""
    fraction = Fraction(scale)
    return fraction.denominator <= 1 << 10 and fraction.numerator < 1 << 20


def _interpolate_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    if attrs["mode"] == "nearest":
        return sympy.Integer(0)
    return 2 * 2 ** len(attrs["spatial"]) * tensor(out, "y").numel()


@op("interpolate", "shape", doc="Resampling over axes `spatial` onto `out_axes`, as torch's F.interpolate: `mode` "
    "nearest (the source element at floor(i·in/out), or floor(i/scale) when `scale` is given), linear, bilinear or "
    "trilinear (1, 2, 3 axes; corners aligned with `align_corners`, else pixel centres). With `scale` (one per "
    "axis) each size is floor(n·scale) and the coordinates use the scale as given; otherwise the output sizes.",
    attrs={"spatial": tuple, "out_axes": tuple, "mode": str, "align_corners": bool, "scale": tuple},
    arity=1, glyph="⤢", flops=_interpolate_flops,
    flops_doc="0 for nearest (a copy); 2·2ⁿ per output element for the n-linear modes (a multiply-add per corner)")
def _interpolate(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "interpolate")
    need_float(x, "interpolate")
    spatial, mode = attrs["spatial"], attrs["mode"]
    if mode not in INTERPOLATE_MODES:
        raise SpecError("E015", f"interpolate mode must be one of {', '.join(INTERPOLATE_MODES)}, got {mode!r}")
    if len(spatial) not in INTERPOLATE_MODES[mode]:
        fit = [m for m, counts in INTERPOLATE_MODES.items() if counts == (len(spatial),)]
        raise SpecError("E019", f"interpolate mode {mode!r} works over {INTERPOLATE_MODES[mode][0]} axes, got "
                        f"{len(spatial)}" + (f"; use mode=\"{fit[0]}\"" if fit else ""))
    if mode == "nearest" and attrs["align_corners"]:
        raise SpecError("E015", "interpolate: align_corners applies to the linear modes, not nearest")
    if len(attrs["out_axes"]) != len(spatial) or (attrs["scale"] and len(attrs["scale"]) != len(spatial)):
        raise SpecError("E019", f"interpolate: {len(spatial)} spatial axes need as many output sizes or scales")
    for i, (name, o) in enumerate(zip(spatial, attrs["out_axes"], strict=True)):
        n = x.axes[find_axis(x, name, "interpolate")].size
        if attrs["scale"]:
            scale = attrs["scale"][i]
            if not (math.isfinite(scale) and scale > 0):
                raise SpecError("E015", f"interpolate: scale must be a positive number, got {scale}")
            need_same_size(sizes, o.size, scaled_size(sizes, n, scale),
                           f"interpolate: output axis {o.name} has the wrong size")
            value = sizes.value(o.size)
            if value is not None and value < 1:
                raise SpecError("E012", f"interpolate: axis {name} of size {sizes.describe(n)} scaled by {scale} "
                                "leaves no element")
    mapping: dict[str, Axis] = dict(zip(spatial, attrs["out_axes"], strict=True))
    return TensorType(unique_axes(tuple(mapping.get(a.name, a) for a in x.axes), "interpolate"), x.dtype)
