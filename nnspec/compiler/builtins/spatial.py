"""Convolution, pooling and batch normalisation."""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.builtins.core import INIT_STD, REQUIRED, bind, over_axis
from nnspec.compiler.elaborate import Surface, builtin
from nnspec.compiler.elaborate.tensor_types import show
from nnspec.compiler.ir import Axis, DType
from nnspec.compiler.ops.conv import out_size
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
    names = [f"{s}_out" for s in spatial] if a["into"] is None else b.axis_names(a["into"])
    if len(names) != n:
        raise SpecError("E019", f"{what}: into= names {len(names)} axes for {n} spatial axes", a["into"].span)
    if min((*kernel, *stride), default=1) < 1 or min(padding, default=0) < 0:
        raise SpecError("E015", f"{what}: kernel and stride must be >= 1 and padding >= 0", call.span)
    if what == "pool" and any(2 * p > k for k, p in zip(kernel, padding, strict=True)):
        raise SpecError("E015", f"pool: padding {padding} is more than half the window {kernel}", call.span)
    out_axes = []
    for name, s, k, st, p in zip(names, spatial, kernel, stride, padding, strict=True):
        in_size = t.axis(s).size  # type: ignore[union-attr]
        size = sympy.sympify(out_size(in_size, k, st, p))
        concrete = b.sizes.concrete(size)
        fits = sympy.Ge(b.sizes.concrete(in_size) + 2 * p, k)  # the window fits at least once
        if fits is sympy.false:
            raise SpecError("E023", f"{what}: a window of {k} (padding {p}) does not fit axis {s} of size "
                            f"{b.sizes.describe(in_size)}", call.span)
        if fits is not sympy.true:
            b.sizes.assume(fits, f"{in_size + 2 * p} >= {k}")
        out_axes.append(Axis(name, concrete if concrete.is_Integer else size))
    return {"spatial": tuple(spatial), "kernel": kernel, "stride": stride, "padding": padding,
            "out_axes": tuple(out_axes)}


@builtin("conv", "conv(x, out, kernel, stride=1, padding=0, channel=AXIS, over=(AXIS, ...), into=(NAME, ...), "
         "bias=true, name=conv)", "Convolution over 1-3 named spatial axes.")
def _conv(b: Surface, call: ast.Call) -> Any:
    a, _ = bind(call, "conv", [("x", REQUIRED), ("out", REQUIRED), ("kernel", REQUIRED), ("stride", None),
                               ("padding", None), ("channel", REQUIRED), ("over", None), ("into", None),
                               ("bias", None), ("name", None)])
    x = b.tensor(a["x"])  # type: ignore[arg-type]
    out = b.size(a["out"], "conv output channels")  # type: ignore[arg-type]
    channel = over_axis(b, a["channel"], x, "conv", call.span)
    attrs = _window(b, call, a, x, "conv")
    in_axis = b.type_of(x).axis(channel)
    assert in_axis is not None
    if in_axis.name == out.name:
        in_axis = Axis(f"{in_axis.name}_in", in_axis.size)
    kernel_axes = tuple(Axis(f"kernel_{s}", sympy.Integer(k)) for s, k in zip(attrs["spatial"], attrs["kernel"],
                                                                               strict=True))
    scope = b.claim_scope(b.scope_kwarg(call), "conv", call.span)
    w = b.param(scope, "weight", (out, in_axis, *kernel_axes), ("normal", INIT_STD), call.span)
    inputs = [x.node, w.node]
    if a["bias"] is None or b.flag(a["bias"], "bias"):
        inputs.append(b.param(scope, "bias", (out,), ("zeros",), call.span).node)
    return b.emit("conv", inputs, {"channel": channel, **attrs}, call.span, hint=scope)


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
