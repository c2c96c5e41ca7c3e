"""Convolution, pooling and batch normalisation."""

from __future__ import annotations

import math
from typing import Any

import sympy

from nnspec.compiler.builtins.core import INIT_STD, REQUIRED, bind, over_axis
from nnspec.compiler.elaborate import Surface, builtin
from nnspec.compiler.elaborate.tensor_types import show
from nnspec.compiler.ir import Axis, DType
from nnspec.compiler.ops.conv import check_groups, exact_scale, out_size, scaled_size, transposed_out_size
from nnspec.errors import SpecError
from nnspec.spec import ast


def _window(b: Surface, call: ast.Call, a: dict[str, Any], x: Any, what: str) -> dict[str, Any]:
    t = b.type_of(x)
    if a["over"] is None:
        raise SpecError("E019", f"{what} needs over=AXIS or over=(AXIS, AXIS): the spatial axes", call.span)
    spatial = b.axis_names(a["over"])
    for name in spatial:
        if name not in t.names:
            raise SpecError("E017", f"{what}: no axis '{name}' in {show(t)}", a["over"].span)
    n = len(spatial)
    kernel = b.ints(a["kernel"], n, "kernel")
    stride = kernel if a["stride"] is None and what == "pool" else (
        (1,) * n if a["stride"] is None else b.ints(a["stride"], n, "stride"))
    padding = (0,) * n if a["padding"] is None else b.ints(a["padding"], n, "padding")
    transposed = what == "conv_transpose"
    extra = (0,) * n if a.get("output_padding") is None else b.ints(a["output_padding"], n, "output_padding")
    names = [f"{s}_out" for s in spatial] if a["into"] is None else b.axis_names(a["into"])
    if len(names) != n:
        raise SpecError("E019", f"{what}: into= names {len(names)} axes for {n} spatial axes", a["into"].span)
    if min((*kernel, *stride), default=1) < 1 or min(padding, default=0) < 0:
        raise SpecError("E015", f"{what}: kernel and stride must be >= 1 and padding >= 0", call.span)
    if what == "pool" and any(2 * p > k for k, p in zip(kernel, padding, strict=True)):
        raise SpecError("E015", f"pool: padding {padding} is more than half the window {kernel}", call.span)
    if any(not 0 <= e < s for e, s in zip(extra, stride, strict=True)):
        raise SpecError("E015", f"{what}: output_padding {extra} must be >= 0 and smaller than the stride {stride}",
                        a["output_padding"].span)
    out_axes = []
    for name, s, k, st, p, e in zip(names, spatial, kernel, stride, padding, extra, strict=True):
        in_size = t.axis(s).size  # type: ignore[union-attr]
        size = sympy.sympify(transposed_out_size(in_size, k, st, p, e) if transposed else out_size(in_size, k, st, p))
        concrete = b.sizes.concrete(size)
        # the window fits at least once; a transposed one leaves at least one position after cropping the padding
        fits = sympy.Ge(concrete, 1) if transposed else sympy.Ge(b.sizes.concrete(in_size) + 2 * p, k)
        if fits is sympy.false:
            raise SpecError("E023", f"{what}: padding {p} crops all {b.sizes.describe(concrete)} positions of axis {s}"
                            if transposed else f"{what}: a window of {k} (padding {p}) does not fit axis {s} of size "
                            f"{b.sizes.describe(in_size)}", call.span)
        if fits is not sympy.true:
            b.sizes.assume(fits, f"{size} >= 1" if transposed else f"{in_size + 2 * p} >= {k}")
        out_axes.append(Axis(name, concrete if concrete.is_Integer else size))
    window = {"spatial": tuple(spatial), "kernel": kernel, "stride": stride, "padding": padding,
              "out_axes": tuple(out_axes)}
    return {**window, "output_padding": extra} if transposed else window


def _groups(b: Surface, call: ast.Call, a: dict[str, Any], channels: list[Axis], what: str) -> int:
    """`groups=`: both channel counts must split into that many groups, checked before the weight is made."""
    groups = 1 if a["groups"] is None else b.ints(a["groups"], 1, "groups")[0]
    try:
        check_groups(b.sizes, channels, groups, what)
    except SpecError as err:
        err.span = err.span or (call.span if a["groups"] is None else a["groups"].span)
        raise
    return groups


def _group_axis(axis: Axis, other: Axis, groups: int, suffix: str) -> Axis:
    """The weight's second axis: the channels of `axis` one channel of `other` meets, all of them or one group's."""
    if groups > 1:   # named for its size: axis names are one size per block, and C/2 and C/4 may both occur
        return Axis(f"{axis.name}/{groups}", axis.size / groups)
    # a square map keeps its axis name; the weight still needs two distinct axis names
    return Axis(f"{axis.name}_{suffix}", axis.size) if axis.name == other.name else axis


def _kernel_axes(attrs: dict[str, Any]) -> tuple[Axis, ...]:
    """A convolution weight's kernel axes, one per spatial axis, named after it."""
    return tuple(Axis(f"kernel_{s}", sympy.Integer(k)) for s, k in zip(attrs["spatial"], attrs["kernel"], strict=True))


def _bias(b: Surface, call: ast.Call, a: dict[str, Any], scope: str, out: Axis) -> list[str]:
    """The bias parameter's node, unless `bias=false`."""
    if a["bias"] is None or b.flag(a["bias"], "bias"):
        return [b.param(scope, "bias", (out,), ("zeros",), call.span).node]
    return []


@builtin("conv", "conv(x, out, kernel, stride=1, padding=0, channel=AXIS, over=(AXIS, ...), into=(NAME, ...), "
         "bias=true, groups=1, name=conv)", "Convolution over 1-3 named spatial axes; `groups` splits the "
         "channels into groups convolved separately (depthwise: groups = input channels, `out` a multiple of them).")
def _conv(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "conv", [("x", REQUIRED), ("out", REQUIRED), ("kernel", REQUIRED), ("stride", None),
                               ("padding", None), ("channel", REQUIRED), ("over", None), ("into", None),
                               ("bias", None), ("groups", None), ("name", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    out = b.size(a["out"], "conv output channels")  # type: ignore[arg-type]
    channel = over_axis(b, a["channel"], x, "conv", call.span)
    attrs = _window(b, call, a, x, "conv")
    in_axis = b.type_of(x).axis(channel)
    assert in_axis is not None
    groups = _groups(b, call, a, [in_axis, out], "conv")
    scope = b.claim_scope(b.scope_kwarg(call), "conv", call.span)
    w = b.param(scope, "weight", (out, _group_axis(in_axis, out, groups, "in"), *_kernel_axes(attrs)),
                ("normal", INIT_STD), call.span)
    inputs = [x.node, w.node, *_bias(b, call, a, scope, out)]
    if groups != 1:   # only when grouped: a plain conv's node (and so its generated code) is as it always was
        attrs["groups"] = groups
    return b.emit("conv", inputs, {"channel": channel, **attrs}, call.span, hint=scope)


@builtin("conv_transpose", "conv_transpose(x, out, kernel, stride=1, padding=0, output_padding=0, groups=1, "
         "channel=AXIS, over=(AXIS, ...), into=(NAME, ...), bias=true, name=conv_transpose)",
         "Transposed convolution (torch's ConvTransposeNd) over 1-3 named spatial axes: each size n becomes "
         "(n - 1)·stride - 2·padding + kernel + output_padding.")
def _conv_transpose(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "conv_transpose", [("x", REQUIRED), ("out", REQUIRED), ("kernel", REQUIRED), ("stride", None),
                                         ("padding", None), ("output_padding", None), ("groups", None),
                                         ("channel", REQUIRED), ("over", None), ("into", None), ("bias", None),
                                         ("name", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    out = b.size(a["out"], "conv_transpose output channels")  # type: ignore[arg-type]
    channel = over_axis(b, a["channel"], x, "conv_transpose", call.span)
    attrs = _window(b, call, a, x, "conv_transpose")
    in_axis = b.type_of(x).axis(channel)
    assert in_axis is not None
    groups = _groups(b, call, a, [in_axis, out], "conv_transpose")
    scope = b.claim_scope(b.scope_kwarg(call), "conv_transpose", call.span)
    # torch's layout [in, out/groups, *kernel]: the transpose of the convolution mapping out back to in
    w = b.param(scope, "weight", (in_axis, _group_axis(out, in_axis, groups, "out"), *_kernel_axes(attrs)),
                ("normal", INIT_STD), call.span)
    inputs = [x.node, w.node, *_bias(b, call, a, scope, out)]
    return b.emit("conv_transpose", inputs, {"channel": channel, "out_channel": out.name, "groups": groups, **attrs},
                  call.span, hint=scope)


def _pool(kind: str) -> Any:
    def fn(b: Surface, call: ast.Call) -> Any:
        a, _ = bind(call, f"{kind}pool", [("x", REQUIRED), ("kernel", REQUIRED), ("stride", None),
                                          ("padding", None), ("over", None), ("into", None)])
        x = b.tensor(a["x"])  # type: ignore[arg-type]
        return b.emit("pool", [x.node], {"kind": kind, **_window(b, call, a, x, "pool")}, call.span)
    return fn


builtin("maxpool", "maxpool(x, kernel, stride=kernel, padding=0, over=(AXIS, ...), into=(NAME, ...))",
        "Max pooling.")(_pool("max"))
builtin("avgpool", "avgpool(x, kernel, stride=kernel, padding=0, over=(AXIS, ...), into=(NAME, ...))",
        "Average pooling.")(_pool("avg"))


@builtin("interpolate", 'interpolate(x, size=(SIZE, ...), scale=none, over=(AXIS, ...), into=(NAME, ...), '
         'mode="nearest", align_corners=false)',
         "Resize 1-3 named spatial axes to `size` (output axes named after it) or by `scale` (named AXIS_out), as "
         "torch's F.interpolate: mode nearest, linear, bilinear or trilinear.")
def _interpolate(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "interpolate", [("x", REQUIRED), ("size", None), ("scale", None), ("over", None), ("into", None),
                                      ("mode", None), ("align_corners", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    t = b.type_of(x)
    if a["over"] is None:
        raise SpecError("E019", "interpolate needs over=AXIS or over=(AXIS, AXIS): the spatial axes", call.span)
    spatial = b.axis_names(a["over"])
    for name in spatial:
        if name not in t.names:
            raise SpecError("E017", f"interpolate: no axis '{name}' in {show(t)}", a["over"].span)
    if (a["size"] is None) == (a["scale"] is None):
        raise SpecError("E019", "interpolate needs either size=(...) or scale=..., not both or neither", call.span)
    n = len(spatial)
    scale: tuple[float, ...] = ()
    if a["size"] is not None:
        items = a["size"].items if isinstance(a["size"], ast.Tuple) else [a["size"]] * n
        if len(items) != n:
            raise SpecError("E019", f"interpolate: size has {len(items)} values for {n} spatial axes", a["size"].span)
        out_axes = [b.size(item, "interpolate size") for item in items]
    else:
        items = a["scale"].items if isinstance(a["scale"], ast.Tuple) else [a["scale"]] * n
        if len(items) != n:
            raise SpecError("E019", f"interpolate: scale has {len(items)} values for {n} spatial axes",
                            a["scale"].span)
        scale = tuple(b.number(item, "interpolate scale") for item in items)
        out_axes = []
        for name, factor, item in zip(spatial, scale, items, strict=True):
            if not (math.isfinite(factor) and factor > 0):
                raise SpecError("E015", f"interpolate: scale must be a positive number, got {factor}", item.span)
            in_size = t.axis(name).size  # type: ignore[union-attr]
            if b.sizes.value(in_size) is None and not exact_scale(factor):
                raise SpecError("E015", f"interpolate: axis {name} has a free size, and floor({name}·{factor}) "
                                "depends on rounding for a scale without a short binary fraction (0.5, 1.5, 2 "
                                "have one); give size=(...) instead", item.span)
            out_axes.append(Axis(f"{name}_out", scaled_size(b.sizes, in_size, factor)))
    if a["into"] is not None:
        names = b.axis_names(a["into"])
        if len(names) != n:
            raise SpecError("E019", f"interpolate: into= names {len(names)} axes for {n} spatial axes", a["into"].span)
        out_axes = [Axis(new, o.size) for new, o in zip(names, out_axes, strict=True)]
    mode = "nearest" if a["mode"] is None else b.static(a["mode"], "interpolate mode")
    if not isinstance(mode, str):
        raise SpecError("E026", f"interpolate mode must be a string, got {mode!r}", a["mode"].span)
    align = False if a["align_corners"] is None else b.flag(a["align_corners"], "align_corners")
    attrs = {"spatial": tuple(spatial), "out_axes": tuple(out_axes), "mode": mode, "align_corners": align,
             "scale": scale}
    return b.emit("interpolate", [x.node], attrs, call.span)


@builtin("batchnorm", "batchnorm(x, over=AXIS, eps=1e-5, momentum=0.1, name=batchnorm)", "Batch normalisation.")
def _batchnorm(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "batchnorm", [("x", REQUIRED), ("over", REQUIRED), ("eps", None), ("momentum", None),
                                    ("name", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "batchnorm", call.span)
    axis = b.type_of(x).axis(over)
    assert axis is not None
    eps = 1e-5 if a["eps"] is None else b.number(a["eps"], "eps")
    momentum = 0.1 if a["momentum"] is None else b.number(a["momentum"], "momentum")
    scope = b.claim_scope(b.scope_kwarg(call), "batchnorm", call.span)
    inputs = [x.node,
              b.param(scope, "weight", (axis,), ("ones",), call.span).node,
              b.param(scope, "bias", (axis,), ("zeros",), call.span).node,
              b.buffer(scope, "running_mean", (axis,), ("zeros",), call.span).node,
              b.buffer(scope, "running_var", (axis,), ("ones",), call.span).node,
              b.buffer(scope, "num_batches_tracked", (), ("zeros",), call.span, dtype=DType.int64).node]
    return b.emit("batchnorm", inputs, {"axis": over, "eps": eps, "momentum": momentum}, call.span, hint=scope)


@builtin("groupnorm", "groupnorm(x, groups, over=AXIS, batch=first axis, eps=1e-5, name=groupnorm)",
         "Group normalisation: `over` (the channels) split into `groups`; statistics per index of `batch` (an axis "
         "or a tuple of axes) over each group and every other axis.")
def _groupnorm(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "groupnorm", [("x", REQUIRED), ("groups", REQUIRED), ("over", REQUIRED), ("batch", None),
                                    ("eps", None), ("name", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    over = over_axis(b, a["over"], x, "groupnorm", call.span)
    t = b.type_of(x)
    axis = t.axis(over)
    assert axis is not None
    if a["batch"] is None:
        # torch's GroupNorm takes statistics per sample: its first dim
        batch = [t.axes[0].name] if t.rank > 1 else []
        if over in batch:
            raise SpecError("E019", f"groupnorm: the channel axis '{over}' is x's first axis; say which axes hold "
                            "independent samples with batch=(...)", call.span)
    else:
        batch = b.axis_names(a["batch"])  # type: ignore[arg-type]
        for name in batch:
            if name not in t.names:
                raise SpecError("E017", f"groupnorm: no axis '{name}' in {show(t)}", a["batch"].span)  # type: ignore[union-attr]
    groups = b.ints(a["groups"], 1, "groups")[0]  # type: ignore[arg-type]
    eps = 1e-5 if a["eps"] is None else b.number(a["eps"], "eps")
    scope = b.claim_scope(b.scope_kwarg(call), "groupnorm", call.span)
    inputs = [x.node, b.param(scope, "weight", (axis,), ("ones",), call.span).node,
              b.param(scope, "bias", (axis,), ("zeros",), call.span).node]
    attrs = {"axis": over, "groups": groups, "batch": tuple(batch), "eps": eps}
    return b.emit("groupnorm", inputs, attrs, call.span, hint=scope)
